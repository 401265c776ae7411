import Foundation
import KilnSupport

/// The embedded QEMU driver (`qemu:///embed?root=DIR`): libvirt inside Kiln's process, no daemon.
/// A process can open the driver at one root only, and a root belongs to one process, so each Kiln process uses
/// `/tmp/kiln-libvirt-<pid>` for its whole life (short, because libvirt puts UNIX sockets below it), and removes
/// the roots of Kiln processes that have exited.
public enum EmbeddedDriver {
    private static let processRoot: Result<String, KilnError> = {
        let base = FileManager.default.temporaryDirectory.path + "/kiln-libvirt-"
        let directory = (base as NSString).deletingLastPathComponent
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where entry.hasPrefix("kiln-libvirt-") {
            guard let pid = Int32(entry.dropFirst("kiln-libvirt-".count)), pid != getpid() else { continue }
            if kill(pid, 0) != 0 && errno == ESRCH {
                killOrphanedGuests(root: directory + "/" + entry)
                try? FileManager.default.removeItem(atPath: directory + "/" + entry)
            }
        }
        let root = rootPath
        // Killed outright, this process's QEMUs (their command lines name the root) and the root go too.
        ProcessWatchdog.shared?.killProcesses(naming: root)
        ProcessWatchdog.shared?.removeOnDeath(root)
        // The root goes with the process; roots of processes that died are swept by the next one.
        atexit {
            try? FileManager.default.removeItem(atPath: EmbeddedDriver.rootPath)
        }
        return Result { () throws(KilnError) -> String in try prepare(root: root) }
    }()

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
        let root = rootPath
        try? FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        setenv("LIBVIRT_LOG_OUTPUTS", "3:file:\(root)/libvirt.log", 1)
    }

    static var rootPath: String { FileManager.default.temporaryDirectory.path + "/kiln-libvirt-" + String(getpid()) }

    /// A Kiln process killed outright (SIGKILL, a crash) cannot tear its VMs down, and the embedded driver has no
    /// daemon to do it: QEMU processes whose sockets live under a dead process's root are killed here.
    static func killOrphanedGuests(root: String) {
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { continue }
            let commandLine = String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
            if commandLine.contains("qemu-system") && commandLine.contains(root + "/") {
                kill(pid, SIGKILL)
            }
        }
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
        guard uri == "qemu:///embed?root=" + rootPath else { return }
        copyCapabilities(from: capabilitiesPath(root: rootPath), to: sharedCapabilitiesPath)
    }

    /// The connection URI of this process's embedded driver, preparing its root on first use.
    public static func processURI() throws(KilnError) -> String {
        try processRoot.get()
    }

    /// Writes DIR/etc/qemu.conf and returns the connection URI.
    public static func prepare(root: String) throws(KilnError) -> String {
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
        guard (root + "/run/libvirt/qemu/x.sock").utf8.count < 100 else {
            throw KilnError(.invalidArgument, "the embedded libvirt root \(root) is too long for UNIX socket paths; use a shorter --state-dir")
        }
        return "qemu:///embed?root=" + root
    }
}
