import Foundation
import KilnSupport

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
