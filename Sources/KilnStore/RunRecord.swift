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

    public init(runOutputName: String, type: String, artifactId: String? = nil, artifactUri: String? = nil,
                provisioningState: String, path: String? = nil, error: String? = nil) {
        self.runOutputName = runOutputName
        self.type = type
        self.artifactId = artifactId
        self.artifactUri = artifactUri
        self.provisioningState = provisioningState
        self.path = path
        self.error = error
    }
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
    /// The build cache's checkpoint the run resumed from, and the customizers it did not run again.
    public var resumedFrom: String?
    public var reusedSteps: [String]?
    /// The libvirt host the build VM ran on, for a build on another host (`--connect qemu+ssh://…`); nil: this machine.
    public var host: String?
    /// The build cache's checkpoint folders this run resumed from or wrote, oldest first (`kiln build --resume`).
    public var checkpoints: [String]?

    public struct Phase: Codable, Sendable {
        public var name: String
        public var seconds: Double

        public init(name: String, seconds: Double) {
            self.name = name
            self.seconds = seconds
        }
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
        try? RecordFile.write(self, to: path)
    }

    public static func read(from path: String) -> RunRecord? {
        RecordFile.read(RunRecord.self, from: path)
    }
}
