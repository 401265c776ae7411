import Foundation

/// A process as it can be recognised later, even by another process: the host's boot ID, the PID and the PID's start
/// time (so a reused PID, or a PID from before a reboot, is not mistaken for the original). Linux /proc only.
public struct ProcessIdentity: Sendable, Equatable, CustomStringConvertible {
    public var bootID: String
    public var pid: Int32
    public var startTicks: UInt64

    public static var current: ProcessIdentity {
        let pid = getpid()
        return ProcessIdentity(bootID: currentBootID(), pid: pid, startTicks: startTicks(of: pid) ?? 0)
    }

    /// `bootID:pid:startTicks`, as stored.
    public var description: String { "\(bootID):\(pid):\(startTicks)" }

    public init(bootID: String, pid: Int32, startTicks: UInt64) {
        self.bootID = bootID
        self.pid = pid
        self.startTicks = startTicks
    }

    public init?(_ text: String) {
        let parts = text.split(separator: ":")
        guard parts.count == 3, let pid = Int32(parts[1]), let ticks = UInt64(parts[2]) else { return nil }
        self.init(bootID: String(parts[0]), pid: pid, startTicks: ticks)
    }

    /// Whether this process is still running on this host.
    public var isAlive: Bool {
        guard bootID == ProcessIdentity.currentBootID(), let ticks = ProcessIdentity.startTicks(of: pid) else { return false }
        return ticks == startTicks
    }

    static func currentBootID() -> String {
        let text = (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8)) ?? "unknown"
        return text.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Field 22 of /proc/PID/stat (start time in clock ticks after boot); nil when there is no such process.
    /// A zombie still has its entry, so it counts as gone.
    static func startTicks(of pid: Int32) -> UInt64? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        // Fields after the command name, which may itself hold spaces and parentheses.
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 19, fields[0] != "Z", let ticks = UInt64(fields[19]) else { return nil }
        return ticks
    }
}
