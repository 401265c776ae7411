import Foundation
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
            if let host = record.host { object["host"] = host }
            return object
        }
    }
}

extension BuildEvent {
    /// What a customizer or distribution reported, as the build's event.
    init(_ progress: ProgressEvent) {
        switch progress {
        case .message(let text): self = .message(text)
        case .warning(let text): self = .warning(text)
        case .output(let customizer, let stream, let line): self = .output(customizer: customizer, stream: stream, line: line)
        }
    }
}
