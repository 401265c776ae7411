import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Starts a program in its own session (so closing the terminal that started it does not stop it), with standard
/// input from /dev/null and standard output and error appended to a log file. Used by `template run --no-wait`.
public enum DetachedProcess {
    public static func spawn(_ executable: String, _ arguments: [String], logPath: String) throws(KilnError) -> pid_t {
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // POSIX_SPAWN_SETSID (glibc 2.26+): the child calls setsid() before exec.
        posix_spawnattr_setflags(&attributes, Int16(0x80))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
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
