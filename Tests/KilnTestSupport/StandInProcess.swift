import Foundation

/// A process that stands in for a build's QEMU: its command line names `path`, as QEMU's names its disk. It waits
/// on a builtin `read` (no child that would outlive the shell and hold the test's output open) until killed.
public final class StandInProcess {
    public let process: Process

    public init(naming path: String) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "read line", path]
        process.standardInput = Pipe()
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
    }

    deinit { kill(process.processIdentifier, SIGKILL) }

    /// Running: not gone and not a zombie, whoever reaps it (Foundation's own bookkeeping is not relied on).
    public var isAlive: Bool {
        guard let stat = FileManager.default.contents(atPath: "/proc/\(process.processIdentifier)/stat") else { return false }
        return !String(decoding: stat, as: UTF8.self).contains(") Z ")
    }
}
