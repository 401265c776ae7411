import Foundation
import KilnDigest
import KilnLibvirt
import KilnSupport

/// A build VM on another libvirt host (`--connect qemu+ssh://user@host/system --pool NAME`), with Kiln's state on
/// this machine (docs/remote-hosts.md):
/// - its disks are volumes in the host's storage pool, made through libvirt's storage API over the connection's own
///   transport: the source uploaded once and kept under its sha256 (`kiln-source-<sha256>.<format>`), the build's
///   overlay on it and the NoCloud seed per run; the console log and UEFI variables as files in the pool directory;
/// - the guest's SSH port is forwarded by QEMU to the host's loopback only, and reached from here through an SSH
///   `direct-tcpip` channel (OpenSSH's `-L`, with the URI's own key, known_hosts and ssh command, so it logs in as
///   libvirt's connection does);
/// - after the guest powered off, only the overlay (the build's changes) comes back, and is put on the local source:
///   the outputs are made here from the same bytes as on the embedded driver.
public struct RemoteHost: Sendable, Equatable {
    public var uri: String
    public var host: String
    public var user: String?
    public var port: Int?
    /// The storage pool on the host that keeps the sources and the builds' volumes.
    public var pool: String
    /// The URI's `keyfile`, `command` (the ssh program), `known_hosts` and `no_verify`, as libvirt reads them.
    public var keyFile: String?
    public var sshCommand: String
    public var knownHosts: String?
    public var noVerify: Bool

    public init(uri: String, pool: String) throws(KilnError) {
        guard let components = URLComponents(string: uri), let host = components.host, !host.isEmpty else {
            throw KilnError(.invalidArgument, "--connect \(uri): expected a remote libvirt URI such as qemu+ssh://root@lab1/system")
        }
        guard components.scheme == "qemu+ssh" else {
            throw KilnError(.unsupported, "--connect \(uri): a build on a remote host goes through qemu+ssh:// (Kiln reaches the guest through the same SSH server); found \(components.scheme ?? "no scheme")")
        }
        guard components.path == "/system" else {
            throw KilnError(.unsupported, "--connect \(uri): expected the host's system daemon (/system), found \(components.path.isEmpty ? "no path" : components.path)")
        }
        self.uri = uri
        self.host = host
        self.user = components.user
        self.port = components.port
        self.pool = pool
        let query = Dictionary((components.queryItems ?? []).map { ($0.name, $0.value ?? "") }, uniquingKeysWith: { $1 })
        keyFile = query["keyfile"]
        sshCommand = query["command"] ?? "ssh"
        knownHosts = query["known_hosts"]
        noVerify = query["no_verify"] == "1"
    }

    /// TCG or KVM as the host's libvirt offers it (its QEMU runs there, so this machine's probe says nothing of it).
    /// libvirt's word is trusted here: the boot probe Kiln runs locally (`AcceleratorProbe`) needs the host's kernel.
    public func acceleratorDecision() async throws(KilnError) -> AcceleratorDecision {
        let kvm = try await LibvirtConnection.with(uri) { connection async in await connection.offersKVM() }
        return AcceleratorDecision(accelerator: kvm ? .kvm : .tcg,
                                   evidence: kvm ? "\(host)'s libvirt offers KVM domains (--accel tcg if its guests hang)" : "\(host)'s libvirt offers no KVM domains",
                                   bootID: "", decidedAt: Date())
    }

    /// The source in the host's pool, uploaded unless it is there already (what a build does first).
    public func uploadSource(_ image: SourceImage, events: @escaping @Sendable (String) -> Void) async throws(KilnError) {
        let format = try RemoteDisks.volumeFormat(image.format)
        try await LibvirtConnection.with(uri) { connection throws(KilnError) in
            _ = try await RemoteDisks.uploadedSource(image, format: format, into: try await connection.storagePool(named: pool), host: host, events: events)
        }
    }

    /// `host`, or `host:port` when the URI names a port: how notices tell hosts apart.
    public var label: String { port.map { "\(host):\($0)" } ?? host }

    /// `user@host`, or `host`.
    public var destination: String { user.map { "\($0)@\(host)" } ?? host }

    /// The ssh arguments that log in as libvirt's connection does (before the destination).
    public var sshOptions: [String] {
        var options = ["-o", "BatchMode=yes"]
        if let port { options += ["-p", String(port)] }
        if let keyFile { options += ["-i", keyFile] }
        if let knownHosts { options += ["-o", "UserKnownHostsFile=\(knownHosts)"] }
        if noVerify { options += ["-o", "StrictHostKeyChecking=no"] }
        return options
    }
}

/// `ssh -N -L 127.0.0.1:LOCAL:127.0.0.1:PORT` to the remote host: the guest's forwarded port on the host's loopback,
/// reached through a `direct-tcpip` channel. Its log, in the run directory, names the run directory, so the
/// watchdog stops it when Kiln dies.
final class SSHTunnel: @unchecked Sendable {
    let localPort: Int
    let remotePort: Int
    private let pid: pid_t
    private let logPath: String

    private init(localPort: Int, remotePort: Int, pid: pid_t, logPath: String) {
        self.localPort = localPort
        self.remotePort = remotePort
        self.pid = pid
        self.logPath = logPath
    }

    static func open(to remote: RemoteHost, remotePort: Int, runDirectory: String) async throws(KilnError) -> SSHTunnel {
        let localPort = try PortAllocator.reserve(nil)
        let logPath = runDirectory + "/ssh-tunnel.log"
        let arguments = remote.sshOptions + ["-N", "-E", logPath, "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=15",
                                             "-L", "127.0.0.1:\(localPort):127.0.0.1:\(remotePort)", remote.destination]
        let executable = remote.sshCommand.hasPrefix("/") ? remote.sshCommand : "/usr/bin/\(remote.sshCommand)"
        let pid = try DetachedProcess.spawn(executable, arguments, logPath: nil, closingOtherDescriptors: true)
        let tunnel = SSHTunnel(localPort: localPort, remotePort: remotePort, pid: pid, logPath: logPath)
        let clock = ContinuousClock()
        let start = clock.now
        while clock.now - start < .seconds(30) {
            if PortAllocator.isListening(localPort) { return tunnel }
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
                throw KilnError(.external, "ssh to \(remote.destination) for the guest's port \(remotePort) ended: \(log.trimmingCharacters(in: .whitespacesAndNewlines))")
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
        tunnel.close()
        throw KilnError(.timeout, "ssh to \(remote.destination) did not open 127.0.0.1:\(localPort) within 30 s (\(logPath))")
    }

    func close() {
        kill(pid, SIGTERM)
        var status: Int32 = 0
        for _ in 0..<50 {
            if waitpid(pid, &status, WNOHANG) == pid { return }
            usleep(20_000)
        }
        kill(pid, SIGKILL)
        waitpid(pid, &status, 0)
    }
}
