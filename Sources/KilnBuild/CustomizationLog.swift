import Foundation
import KilnSupport

/// customization.log: every step, command, guest output line (timestamped, prefixed by the customizer's name),
/// checksum result and error, in AIB's spirit.
public final class CustomizationLog: @unchecked Sendable {
    public let path: String
    private let handle: FileHandle?
    private let lock = NSLockLike()
    private let formatter: DateFormatter
    /// Secure parameter values to show as *** (set by the build engine).
    var mask: SecretMask?

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
            let shown = mask?.mask(message) ?? message
            for line in shown.split(separator: "\n", omittingEmptySubsequences: false) {
                text += "\(stamp) [\(prefix)] \(line)\n"
            }
            handle?.write(Data(text.utf8))
        }
    }

    public func close() {
        lock.withLock { try? handle?.close() }
    }
}

/// Replaces secure parameter values with *** in text and events. Thread-safe: events come from any task.
final class SecretMask: @unchecked Sendable {
    private let lock = NSLockLike()
    private var secrets: [String] = []

    func set(_ values: [String]) {
        let sorted = values.filter { !$0.isEmpty }.sorted { $0.count > $1.count }
        lock.withLock { secrets = sorted }
    }

    func mask(_ text: String) -> String {
        let current = lock.withLock { secrets }
        var output = text
        for secret in current { output = output.replacingOccurrences(of: secret, with: "***") }
        return output
    }

    func mask(_ event: BuildEvent) -> BuildEvent {
        switch event {
        case .message(let text): return .message(mask(text))
        case .warning(let text): return .warning(mask(text))
        case .output(let customizer, let stream, let line): return .output(customizer: customizer, stream: stream, line: mask(line))
        default: return event
        }
    }
}
