import Foundation
import KilnSupport

/// The embedded QEMU driver (`qemu:///embed?root=DIR`): libvirt inside Kiln's process, no daemon.
/// A process can open the driver at one root only, and a root belongs to one process, so each Kiln process uses
/// `<runtime>/libvirt-<pid>` for its whole life, `<runtime>` being the user's private runtime directory
/// (``RuntimeDirectory``: `$XDG_RUNTIME_DIR/kiln` or `/tmp/kiln-<uid>`, mode 0700, checked). The root is made
/// afresh by this process (never one found there), kept short because libvirt puts UNIX sockets below it, and the
/// roots of Kiln processes that have exited are removed, only from that private directory.
public enum EmbeddedDriver {
    /// This process's root, created on first use (before the driver opens: libvirt's log goes inside).
    private static let processRootDirectory: Result<String, KilnError> = Result { () throws(KilnError) -> String in
        let runtime = try RuntimeDirectory.make()
        sweep(runtime: runtime)
        let root = runtime + "/" + rootPrefix + String(getpid())
        try checkSocketRoom(root: root)
        try PrivateDirectory.makeFresh(root)
        // Killed outright, this process's QEMUs (their command lines name the root) and the root go too.
        ProcessWatchdog.shared?.killProcesses(naming: root)
        ProcessWatchdog.shared?.removeOnDeath(root)
        // The root goes with the process; roots of processes that died are swept by the next one.
        atexit {
            if case .success(let root) = EmbeddedDriver.processRootDirectory {
                try? PrivateDirectory.removeIfOurs(root)
            }
        }
        return root
    }

    private static let processRoot: Result<String, KilnError> = processRootDirectory.flatMap { root in
        Result { () throws(KilnError) -> String in try prepare(root: root) }
    }

    static let rootPrefix = "libvirt-"

    /// Removes the roots in `runtime` whose process has exited, with the QEMU processes they left.
    static func sweep(runtime: String) {
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: runtime)) ?? [] where entry.hasPrefix(rootPrefix) {
            guard let pid = Int32(entry.dropFirst(rootPrefix.count)), pid != getpid() else { continue }
            if kill(pid, 0) != 0 && errno == ESRCH {
                killOrphanedGuests(root: runtime + "/" + entry)
                try? PrivateDirectory.removeIfOurs(runtime + "/" + entry)
            }
        }
    }

    /// Sends libvirt's warnings and errors to `<root>/libvirt.log` instead of standard error. libvirt reads
    /// LIBVIRT_LOG_OUTPUTS while the library loads, before `main`, so an executable that wants this calls it
    /// first thing with `reexec: true`: the variable is set and the program restarts itself once with it.
    public static func routeLogging(reexec: Bool = false) {
        guard ProcessInfo.processInfo.environment["LIBVIRT_LOG_OUTPUTS"] == nil else { return }
        if reexec {
            setenv("LIBVIRT_LOG_OUTPUTS", "3:file:/dev/null", 1)
            let arguments = CommandLine.arguments.map { strdup($0) } + [nil]
            execv("/proc/self/exe", arguments)
            // execv returned: carry on without it.
            return
        }
        // The root is made here the one way it is ever made; if that fails, opening the driver reports why.
        guard case .success(let root) = processRootDirectory else { return }
        setenv("LIBVIRT_LOG_OUTPUTS", "3:file:\(root)/libvirt.log", 1)
    }

    /// The deepest UNIX socket libvirt makes below a root for Kiln's domains: the QEMU monitor,
    /// `<root>/lib/qemu/domain-<id>-<name, at most 20 characters>/monitor.sock` (a five-digit domain ID allowed).
    static func deepestSocketPath(root: String) -> String {
        root + "/lib/qemu/domain-99999-" + String(repeating: "n", count: 20) + "/monitor.sock"
    }

    /// sun_path holds 108 bytes with the terminating NUL.
    static func checkSocketRoom(root: String) throws(KilnError) {
        let deepest = deepestSocketPath(root: root)
        guard deepest.utf8.count <= 107 else {
            throw KilnError(.invalidArgument, "the embedded libvirt root \(root) is too long for UNIX socket paths: expected at most 107 bytes for \(deepest), found \(deepest.utf8.count); set XDG_RUNTIME_DIR to a shorter directory or unset it")
        }
    }

    /// A Kiln process killed outright (SIGKILL, a crash) cannot tear its VMs down, and the embedded driver has no
    /// daemon to do it: QEMU processes whose sockets live under a dead process's root are killed here.
    static func killOrphanedGuests(root: String) {
        OrphanProcesses.kill(naming: root, alsoContaining: "qemu-system")
    }

    /// Where QEMU capability probes are kept between processes: libvirt probes QEMU (several QEMU runs, seconds
    /// on a loaded TCG host) whenever a driver starts with an empty cache, and each Kiln process has a new root.
    /// libvirt checks each cached file against the QEMU binary, libvirt and the host, and probes again when stale.
    static var sharedCapabilitiesPath: String { KilnCache.path() + "/libvirt-qemu-capabilities" }

    static func capabilitiesPath(root: String) -> String { root + "/cache/qemu/capabilities" }

    /// Copies every `.xml` from `source` that `destination` lacks or holds with other contents (temp file + rename,
    /// so concurrent processes never read half a file).
    static func copyCapabilities(from source: String, to destination: String) {
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: source)) ?? []).filter { $0.hasSuffix(".xml") }
        guard !files.isEmpty else { return }
        try? FileManager.default.createDirectory(atPath: destination, withIntermediateDirectories: true)
        for file in files {
            guard let data = FileManager.default.contents(atPath: source + "/" + file),
                  FileManager.default.contents(atPath: destination + "/" + file) != data else { continue }
            try? AtomicFile.write(data, to: destination + "/" + file)
        }
    }

    /// After this process's driver started a domain (libvirt probes QEMU then, not when the connection opens):
    /// keep what it probed for the next process.
    public static func keepCapabilities(uri: String) {
        guard case .success(let root) = processRootDirectory, uri == "qemu:///embed?root=" + root else { return }
        copyCapabilities(from: capabilitiesPath(root: root), to: sharedCapabilitiesPath)
    }

    /// The connection URI of this process's embedded driver, preparing its root on first use.
    public static func processURI() throws(KilnError) -> String {
        try processRoot.get()
    }

    /// Writes DIR/etc/qemu.conf and returns the connection URI.
    public static func prepare(root: String) throws(KilnError) -> String {
        try checkSocketRoom(root: root)
        let etc = root + "/etc"
        var lines = [
            "# Written by Kiln for the embedded QEMU driver.",
            // No virtlogd daemon: QEMU's stdout/stderr go to a file under the root.
            "stdio_handler = \"file\"",
            // Kiln passes its disks explicitly; no relabelling or ownership games.
            "security_driver = \"none\"",
            "dynamic_ownership = 0",
            "remember_owner = 0",
            // A Linux build VM reaches Azure's wireserver and instance metadata addresses through user-mode
            // `guestfwd=…-cmd:socat …`, which QEMU runs for each connection; its seccomp sandbox kills QEMU on
            // any spawn, so it is off for the build VMs of this driver.
            "seccomp_sandbox = 0",
        ]
        if getuid() == 0 {
            lines += ["user = \"root\"", "group = \"root\""]
        }
        do {
            try FileManager.default.createDirectory(atPath: etc, withIntermediateDirectories: true)
            try (lines.joined(separator: "\n") + "\n").write(toFile: etc + "/qemu.conf", atomically: true, encoding: .utf8)
        } catch {
            throw KilnError(.io, "cannot write \(etc)/qemu.conf: \(error.localizedDescription)")
        }
        copyCapabilities(from: sharedCapabilitiesPath, to: capabilitiesPath(root: root))
        return "qemu:///embed?root=" + root
    }
}
