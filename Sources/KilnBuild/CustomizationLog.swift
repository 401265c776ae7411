import Foundation
import KilnSupport

/// customization.log: every step, command, guest output line (timestamped, prefixed by the customizer's name),
/// checksum result and error, in AIB's spirit.
///
/// Beside Kiln's own lines, the log carries the lines AIB's customization.log has where its troubleshooting guide
/// tells users to look, so that habits and scripts that scan AIB's log work here too (docs/aib-customizers.md):
/// `PACKER ERR <time> [INFO] (telemetry) Starting provisioner shell` … `ending shell` around each customizer,
/// `PACKER OUT ==> azure-arm: …` for what Packer says and a step's standard error, and
/// `PACKER OUT     azure-arm: …` for a step's standard output.
public final class CustomizationLog: BuildLog, @unchecked Sendable {
    public let path: String
    private let handle: FileHandle?
    private let lock = NSLockLike()
    private let formatter: DateFormatter
    /// Packer's own log time stamps (Go's log package: `2006/01/02 15:04:05`).
    private let packerFormatter: DateFormatter
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
        packerFormatter = DateFormatter()
        packerFormatter.locale = Locale(identifier: "en_US_POSIX")
        packerFormatter.timeZone = TimeZone(identifier: "UTC")
        packerFormatter.dateFormat = "yyyy/MM/dd HH:mm:ss"
    }

    /// A line of Packer's user interface as AIB logs it: `==> azure-arm: text` (a message, or standard error)
    /// or `    azure-arm: text` (standard output).
    public func packerUI(_ prefix: String, _ text: String, stdout: Bool) {
        write(prefix, "PACKER OUT " + (stdout ? "    azure-arm: " : "==> azure-arm: ") + text)
    }

    /// A line of Packer's debug log as AIB logs it: `PACKER ERR 2026/01/02 03:04:05 [INFO] text`.
    public func packerDebug(_ prefix: String, _ text: String) {
        let stamp = lock.withLock { packerFormatter.string(from: Date()) }
        write(prefix, "PACKER ERR \(stamp) \(text)")
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
