import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Whole lines to a file descriptor, one writer at a time. A build's events come from several threads (the build, the
/// guest's output streams, the Azure fabric's server); the kernel writes a pipe atomically only up to PIPE_BUF (4 KiB),
/// so two longer lines written at once could cut into each other, and a reader of `--json` would lose both.
public final class LineWriter: Sendable {
    public static let standardOutput = LineWriter(descriptor: 1)
    public static let standardError = LineWriter(descriptor: 2)

    private let descriptor: Int32
    private let lock = NSLock()

    public init(descriptor: Int32) { self.descriptor = descriptor }

    /// Writes `line` and a newline, retrying short writes and EINTR; gives up silently on another error (a closed
    /// pipe: nobody is reading).
    public func write(_ line: String) {
        write(bytes: Array((line + "\n").utf8))
    }

    public func write(bytes: [UInt8]) {
        lock.lock()
        defer { lock.unlock() }
        var rest = bytes[...]
        while !rest.isEmpty {
            let written = rest.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
            if written < 0 {
                if errno == EINTR { continue }
                return
            }
            rest = rest.dropFirst(written)
        }
    }
}
