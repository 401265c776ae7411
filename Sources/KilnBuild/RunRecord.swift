import Foundation
import KilnSupport

/// AIB's run states (lastRunStatus.runState / runSubState).
public enum RunState: String, Codable, Sendable {
    case running = "Running"
    case canceling = "Canceling"
    case succeeded = "Succeeded"
    case partiallySucceeded = "PartiallySucceeded"
    case failed = "Failed"
    case canceled = "Canceled"
}

public enum RunSubState: String, Codable, Sendable {
    case queued = "Queued"
    case building = "Building"
    case customizing = "Customizing"
    case validating = "Validating"
    case distributing = "Distributing"
}

/// What one distribute target produced: AIB's runOutputs.
public struct RunOutput: Codable, Sendable, Equatable {
    public var runOutputName: String
    public var type: String
    public var artifactId: String?
    public var artifactUri: String?
    public var provisioningState: String
    public var path: String?
    public var error: String?
}

/// The run's status as AIB reports lastRunStatus, plus Kiln's phase timings; kept as run.json in the run directory.
public struct RunRecord: Codable, Sendable {
    public var runID: String
    public var templateName: String
    public var templatePath: String
    public var runState: RunState
    public var runSubState: RunSubState
    public var startTime: Date
    public var endTime: Date?
    public var message: String
    public var source: String?
    public var phases: [Phase]
    public var runOutputs: [RunOutput]

    public struct Phase: Codable, Sendable {
        public var name: String
        public var seconds: Double
    }

    public init(runID: String, templateName: String, templatePath: String) {
        self.runID = runID
        self.templateName = templateName
        self.templatePath = templatePath
        runState = .running
        runSubState = .queued
        startTime = Date()
        message = ""
        phases = []
        runOutputs = []
    }

    public func write(to path: String) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        guard let data = try? encoder.encode(self) else { return }
        try? AtomicFile.write(data, to: path)
    }

    public static func read(from path: String) -> RunRecord? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try? decoder.decode(RunRecord.self, from: data)
    }
}

/// customization.log: every step, command, guest output line (timestamped, prefixed by the customizer's name),
/// checksum result and error, in AIB's spirit.
public final class CustomizationLog: @unchecked Sendable {
    public let path: String
    private let handle: FileHandle?
    private let lock = NSLockLike()
    private let formatter: DateFormatter

    public init(path: String) {
        self.path = path
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        handle = FileHandle(forWritingAtPath: path)
        formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyy-MM-dd'T'HH:mm:ss.SSS'Z'"
    }

    public func write(_ prefix: String, _ message: String) {
        lock.withLock {
            let stamp = formatter.string(from: Date())
            var text = ""
            for line in message.split(separator: "\n", omittingEmptySubsequences: false) {
                text += "\(stamp) [\(prefix)] \(line)\n"
            }
            handle?.write(Data(text.utf8))
        }
    }

    public func close() {
        lock.withLock { try? handle?.close() }
    }
}
