import Foundation

/// What happens to a build's processes and files when Kiln itself is killed outright (SIGKILL, a crash, the OOM
/// killer). Kiln cannot run code then, and the embedded libvirt driver has no daemon: QEMU (which libvirt starts
/// as a daemon, outside Kiln's process tree) would run on, and a `qemu-img` or `cp` writing an output would finish
/// into a file nobody removes.
///
/// The watchdog is a small shell in its own session, reading a pipe whose only writer is this process (the write
/// end is close-on-exec, so no child keeps it open). Kiln tells it, one line each, which paths mark its processes
/// (`k PATH`: the embedded driver's root, a run directory; QEMU's and qemu-img's command lines name them) and
/// which files to remove (`r PATH`: a partial output). When the pipe reaches end of file — this process is gone,
/// however it ended — the watchdog kills every process whose command line names a marked path, then removes the
/// files. A normal end has already stopped and removed everything, and says so (`f PATH`: forget the path), so
/// that a process started afterwards on the run's outputs (`qemu-img info run/out.vhd`, libguestfs) is not killed
/// when this process exits.
public final class ProcessWatchdog: @unchecked Sendable {
    /// The process's watchdog, started on first use; nil if it could not start (a warning, not an error: builds
    /// still work, only a killed Kiln's leftovers wait for the next Kiln's sweep).
    public static let shared: ProcessWatchdog? = try? ProcessWatchdog()

    private let lock = NSLock()
    private var writeEnd: Int32
    public let pid: pid_t

    static let script = #"""
    set -f
    nl='
    '
    kill_paths=''; remove_paths=''; unfinished=''
    while IFS= read -r line; do
      case "$line" in
        'k /'?*) kill_paths="$kill_paths${line#k }$nl" ;;
        'f /'?*)
          kept=''
          IFS=$nl
          for path in $kill_paths; do [ "$path" = "${line#f }" ] || kept="$kept$path$nl"; done
          unset IFS
          kill_paths=$kept ;;
        'r /'?*) remove_paths="$remove_paths${line#r }$nl" ;;
        'c '?*' /'?*) unfinished="$unfinished${line#c }$nl" ;;
      esac
    done
    IFS=$nl
    if [ -n "$kill_paths" ]; then
      patterns=$(mktemp) || patterns=''
      printf '%s' "$kill_paths" > "$patterns"
      for round in 1 2; do
        set +f
        # One grep over every command line (fast even on a busy host); -a: they hold NUL separators.
        matches=$(grep -alF -f "$patterns" /proc/[0-9]*/cmdline 2>/dev/null)
        set -f
        for file in $matches; do
          pid=${file#/proc/}; pid=${pid%/cmdline}
          [ "$pid" = "$$" ] || kill -9 "$pid" 2>/dev/null
        done
      done
      rm -f "$patterns"
    fi
    for path in $remove_paths; do rm -rf -- "$path"; done
    for entry in $unfinished; do
      marker=${entry%% *}; path=${entry#* }
      [ -e "$path/$marker" ] || rm -rf -- "$path"
    done
    """#

    public init() throws(KilnError) {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw KilnError(.io, "cannot make the watchdog's pipe: \(String(cString: strerror(errno)))") }
        _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        // Its own session: a closed terminal's SIGHUP or Ctrl-C's SIGINT to Kiln's process group does not reach it.
        // Nothing else of Kiln's: a pipe's write end held by the watchdog would keep that pipe's reader waiting.
        let child: pid_t
        do {
            child = try DetachedProcess.spawn("/bin/sh", ["-c", Self.script, "kiln-watchdog"], standardInput: fds[0], logPath: nil,
                                              closingOtherDescriptors: true)
        } catch {
            close(fds[0])
            close(fds[1])
            throw error
        }
        close(fds[0])
        writeEnd = fds[1]
        pid = child
        // A write after the watchdog died must be an error, not a fatal signal.
        signal(SIGPIPE, SIG_IGN)
        // Reap it when it ends (it is this process's child), so it is never left a zombie.
        Thread.detachNewThread { var status: Int32 = 0; _ = waitpid(child, &status, 0) }
    }

    /// Kill every process whose command line names something inside the directory `path` when this process dies.
    /// (Matched with a trailing slash, so `/tmp/root-12` never matches another process's `/tmp/root-123/…`.)
    public func killProcesses(naming path: String) { send("k", path.hasSuffix("/") ? path : path + "/") }

    /// Stop watching `path` (given to `killProcesses(naming:)`): what ran there has ended, and processes that name it
    /// from now on (a user's tool opening an output) are none of Kiln's.
    public func forgetProcesses(naming path: String) { send("f", path.hasSuffix("/") ? path : path + "/") }

    /// Remove `path` (a file or a directory tree) when this process dies. Harmless once it is gone or renamed.
    public func removeOnDeath(_ path: String) { send("r", path) }

    /// Remove the directory `path` when this process dies, unless it holds `marker` by then (a checkpoint folder
    /// counts once its `meta.json` is written; before, it is a half-written checkpoint).
    public func removeOnDeath(_ path: String, unlessItHolds marker: String) {
        guard !marker.isEmpty, !marker.contains(" "), !marker.contains("/") else { return }
        send("c", marker + " " + path, path: path)
    }

    /// This process's end as the watchdog sees it (tests): the pipe closes and the watchdog acts.
    public func trigger() {
        lock.lock()
        defer { lock.unlock() }
        if writeEnd >= 0 { close(writeEnd) }
        writeEnd = -1
    }

    private func send(_ kind: String, _ text: String, path: String? = nil) {
        // One line per path; a path that is not absolute, is short or holds a newline is never a pattern.
        let path = path ?? text
        guard path.hasPrefix("/"), path.count > 8, !text.contains("\n") else { return }
        let line = Array("\(kind) \(text)\n".utf8)
        lock.lock()
        defer { lock.unlock() }
        guard writeEnd >= 0 else { return }
        _ = line.withUnsafeBytes { write(writeEnd, $0.baseAddress, $0.count) }
    }
}
