import Foundation

/// Processes a Kiln process left running when it was killed outright: found by what their command line names
/// (QEMU's names the embedded driver's root and the run directory's disks).
public enum OrphanProcesses {
    /// Sends SIGKILL to every process whose command line names something inside `directory` (and contains
    /// `alsoContaining`, when given); returns their PIDs.
    @discardableResult
    public static func kill(naming directory: String, alsoContaining: String? = nil) -> [pid_t] {
        let marker = directory.hasSuffix("/") ? directory : directory + "/"
        var killed: [pid_t] = []
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), pid != getpid(),
                  let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { continue }
            let commandLine = String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
            guard commandLine.contains(marker), alsoContaining.map({ commandLine.contains($0) }) ?? true else { continue }
            if Glibc.kill(pid, SIGKILL) == 0 { killed.append(pid) }
        }
        return killed
    }
}
