import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Starts a program in its own session (so closing the terminal that started it, or Ctrl-C to Kiln's process group,
/// does not stop it). Standard input is `standardInput` or /dev/null; standard output and error are appended to
/// `logPath`, or discarded. Used by `template run --no-wait` and by the ProcessWatchdog.
public enum DetachedProcess {
    /// `closingOtherDescriptors`: the child keeps nothing of Kiln's but its standard streams (glibc ignores a close
    /// action whose descriptor was closed meanwhile).
    public static func spawn(_ executable: String, _ arguments: [String], standardInput: Int32? = nil, logPath: String?,
                             closingOtherDescriptors: Bool = false) throws(KilnError) -> pid_t {
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // POSIX_SPAWN_SETSID (glibc 2.26+): the child calls setsid() before exec.
        posix_spawnattr_setflags(&attributes, Int16(0x80))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let standardInput {
            posix_spawn_file_actions_adddup2(&actions, standardInput, 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        if let logPath {
            posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        } else {
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        }
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        if closingOtherDescriptors {
            for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? [] {
                if let fd = Int32(entry), fd > 2 { posix_spawn_file_actions_addclose(&actions, fd) }
            }
        }
        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let status = posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
        guard status == 0 else {
            throw KilnError(.external, "cannot start \(executable): \(String(cString: strerror(status)))")
        }
        return pid
    }
}
