import Foundation
import KilnGuest
import KilnStore
import KilnSupport

/// What a build reports while it runs. The CLI prints these for people, or as one JSON object per line.
public enum BuildEvent: Sendable {
    case phase(RunSubState, String)
    case message(String)
    case customizerStarted(index: Int, name: String, type: String)
    case output(customizer: String, stream: String, line: String)
    case customizerFinished(index: Int, name: String, seconds: Double, outcome: String)
    case warning(String)
    case finished(RunRecord)

    /// The event as a JSON object (for `--json`).
    public var json: [String: Any] {
        let timestamp = ISO8601DateFormatter().string(from: Date())
        switch self {
        case .phase(let subState, let detail):
            return ["event": "phase", "time": timestamp, "runSubState": subState.rawValue, "detail": detail]
        case .message(let text):
            return ["event": "message", "time": timestamp, "message": text]
        case .warning(let text):
            return ["event": "warning", "time": timestamp, "message": text]
        case .customizerStarted(let index, let name, let type):
            return ["event": "customizerStart", "time": timestamp, "index": index, "name": name, "type": type]
        case .output(let customizer, let stream, let line):
            return ["event": "output", "time": timestamp, "customizer": customizer, "stream": stream, "line": line]
        case .customizerFinished(let index, let name, let seconds, let outcome):
            return ["event": "customizerEnd", "time": timestamp, "index": index, "name": name, "seconds": seconds, "outcome": outcome]
        case .finished(let record):
            var object: [String: Any] = ["event": "result", "time": timestamp, "runState": record.runState.rawValue,
                                         "runSubState": record.runSubState.rawValue, "message": record.message, "runID": record.runID]
            object["runOutputs"] = record.runOutputs.map { output -> [String: Any] in
                var item: [String: Any] = ["runOutputName": output.runOutputName, "type": output.type, "provisioningState": output.provisioningState]
                if let path = output.path { item["path"] = path }
                if let uri = output.artifactUri { item["artifactUri"] = uri }
                if let id = output.artifactId { item["artifactId"] = id }
                return item
            }
            object["phases"] = record.phases.map { ["name": $0.name, "seconds": $0.seconds] }
            return object
        }
    }
}

/// Splits streamed output into lines per stream, so each line can be logged with its customizer's name.
final class LineSplitter: @unchecked Sendable {
    private var pending: [String: [UInt8]] = [:]
    private let lock = NSLock()

    func feed(_ stream: String, _ bytes: [UInt8]) -> [String] {
        lock.lock()
        defer { lock.unlock() }
        var buffer = (pending[stream] ?? []) + bytes
        var lines: [String] = []
        while let newline = buffer.firstIndex(of: 0x0A) {
            lines.append(String(decoding: buffer[..<newline], as: UTF8.self).replacingOccurrences(of: "\r", with: ""))
            buffer.removeSubrange(...newline)
        }
        pending[stream] = buffer
        return lines
    }

    func flush() -> [(String, String)] {
        lock.lock()
        defer { lock.unlock() }
        let rest = pending.compactMap { stream, bytes in bytes.isEmpty ? nil : (stream, String(decoding: bytes, as: UTF8.self)) }
        pending.removeAll()
        return rest
    }
}

/// A command's streamed output: each line to the log and the event stream under the customizer's name, the last
/// lines kept for a failure message.
final class StepOutput: @unchecked Sendable {
    private let tail = OutputTail(lines: 20)
    private let splitter = LineSplitter()
    private let label: String
    private let log: CustomizationLog
    private let events: @Sendable (BuildEvent) -> Void

    /// Runs `command` on `session` with its output streamed under `label`: the result and the output's last lines.
    /// `stdin` nil leaves the command's standard input open; `[]` gives it end-of-file at once, as Packer's
    /// communicators do, so that a command that asks a question fails instead of waiting for the build timeout.
    static func exec(_ command: String, on session: any GuestSession, stdin: [UInt8]? = nil, label: String, log: CustomizationLog,
                     events: @escaping @Sendable (BuildEvent) -> Void) async throws(KilnError) -> (result: ExecResult, tail: OutputTail) {
        let output = StepOutput(label: label, log: log, events: events)
        let result = try await session.exec(command, stdin: stdin) { output.feed($0.stream.rawValue, $0.bytes) }
        output.finish()
        return (result, output.tail)
    }

    private init(label: String, log: CustomizationLog, events: @escaping @Sendable (BuildEvent) -> Void) {
        self.label = label
        self.log = log
        self.events = events
    }

    private func feed(_ stream: String, _ bytes: [UInt8]) {
        for line in splitter.feed(stream, bytes) { emit(stream, line) }
    }

    /// Emits a last line without its newline, if any.
    private func finish() {
        for (stream, rest) in splitter.flush() { emit(stream, rest) }
    }

    private func emit(_ stream: String, _ line: String) {
        tail.append(line)
        log.packerUI(label, line, stdout: stream == OutputChunk.Stream.stdout.rawValue)
        events(.output(customizer: label, stream: stream, line: line))
    }
}
