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

/// The volumes of one build on a remote host, and the source volume they sit on.
final class RemoteDisks: @unchecked Sendable {
    let pool: LibvirtStoragePool
    let source: LibvirtStorageVolume
    let overlay: LibvirtStorageVolume
    private(set) var seed: LibvirtStorageVolume?
    /// The pool's directory on the host (the source volume's): the console log and UEFI variables go there.
    let directory: String
    let runID: String

    private init(pool: LibvirtStoragePool, source: LibvirtStorageVolume, overlay: LibvirtStorageVolume, runID: String) {
        self.pool = pool
        self.source = source
        self.overlay = overlay
        self.runID = runID
        directory = (source.path as NSString).deletingLastPathComponent
    }

    var consolePath: String { directory + "/kiln-\(runID)-console.log" }
    var nvramPath: String { directory + "/kiln-\(runID)-nvram.fd" }

    /// The source in the pool (uploaded unless a complete copy is there) and the overlay on it.
    static func prepare(_ remote: RemoteHost, connection: LibvirtConnection, source image: SourceImage, capacityBytes: UInt64, runID: String,
                        events: @escaping @Sendable (String) -> Void) async throws(KilnError) -> RemoteDisks {
        let pool: LibvirtStoragePool
        do {
            pool = try await connection.storagePool(named: remote.pool)
        } catch where error.code == .notFound {
            throw KilnError(.notFound, "the storage pool \(remote.pool) does not exist on \(remote.host): `kiln doctor --connect \(ShellQuote.quote(remote.uri)) --pool \(remote.pool)` prints the commands that make it, or name another pool with --pool", cause: error)
        }
        let format = try volumeFormat(image.format)
        let source = try await uploadedSource(image, format: format, into: pool, host: remote.host, events: events)
        let overlay = try await pool.createVolume(.overlay(name: "kiln-\(runID)-disk.qcow2", on: source, backingFormat: format,
                                                           capacityBytes: max(capacityBytes, image.virtualSizeBytes)))
        events("overlay \(overlay.path) on \(remote.host), on \(source.name) (the source volume is opened read-only)")
        return RemoteDisks(pool: pool, source: source, overlay: overlay, runID: runID)
    }

    static func volumeFormat(_ format: String) throws(KilnError) -> StorageVolumeSpec.Format {
        guard let known = StorageVolumeSpec.Format(rawValue: format) else {
            throw KilnError(.unsupported, "a source in format \(format) cannot go to a remote host's pool (raw, qcow2 and vpc can)")
        }
        return known
    }

    /// The source's volume, named by the file's sha256: uploaded the first time, found afterwards. A marker
    /// volume (`….complete`) is made once the upload finished. Several builds may want the same source on one host at
    /// once: only the one that creates the volume uploads; the others wait for its marker while the volume grows. A
    /// volume without its marker whose file does not change for `stalledAfter` (an upload cut off, its build gone) is
    /// uploaded again by the one build that creates the `….reclaim` volume first, and only if the volume is still that
    /// same unchanged file: no build deletes another's upload.
    static func uploadedSource(_ image: SourceImage, format: StorageVolumeSpec.Format, into pool: LibvirtStoragePool, host: String,
                               stalledAfter: Duration = .seconds(60),
                               events: @escaping @Sendable (String) -> Void) async throws(KilnError) -> LibvirtStorageVolume {
        let clock = ContinuousClock()
        let hashingStart = clock.now
        let path = image.path
        let sha256 = try await Blocking.run { () throws(KilnError) -> String in try SHA256Digest.hex(ofFile: path) }
        let fileBytes = FileSize.bytes(path)
        events("source \(image.displayName): sha256 \(sha256.prefix(16))… (\(DurationText.format(clock.now - hashingStart)))")
        let name = "kiln-source-\(sha256).\(format.rawValue)"
        let marker = "kiln-source-\(sha256).complete", reclaimName = "kiln-source-\(sha256).reclaim"
        // Volumes libvirt did not make itself (a daemon restarted since) are seen after a refresh; one is refused while
        // another build creates a volume there, and libvirt's own list is then current.
        try? await pool.refresh()
        for _ in 0..<6 {
            var reclaim: LibvirtStorageVolume?
            if let existing = try? await pool.volume(named: name) {
                if (try? await pool.volume(named: marker)) != nil {
                    events("source volume \(name) is on \(host) already")
                    return existing
                }
                events("source volume \(name) on \(host) is not complete: waiting while another build uploads it")
                switch try await awaitUpload(of: existing, marker: marker, in: pool, stalledAfter: stalledAfter) {
                case .completed:
                    events("source volume \(name) on \(host) was completed by another build")
                    return existing
                case .gone:
                    continue  // removed by the build that uploads it again: look again
                case .stalled(let stamp):
                    do {
                        reclaim = try await pool.createVolume(StorageVolumeSpec(name: reclaimName, capacityBytes: 0, format: .raw))
                    } catch where error.code == .alreadyExists {
                        continue  // another build is uploading it again: wait for that one
                    }
                    // Still the same untouched file? Another build may have replaced it since the last look.
                    guard let now = try? await pool.volume(named: name).stamp(), now == stamp else {
                        try? await reclaim?.delete()
                        continue
                    }
                    events("source volume \(name) on \(host) stopped growing without being completed: uploading it again")
                    try? await existing.delete()
                }
            }
            // Room for the source and the build's first writes, or the upload would end in "no space left" minutes later.
            if let space = try? await pool.space(), space.availableBytes < fileBytes + minimumBuildBytes {
                try? await reclaim?.delete()
                throw KilnError(.io, "the storage pool \(pool.name) on \(host) has \(ByteSize.format(space.availableBytes)) free: "
                                + "the source needs \(ByteSize.format(fileBytes)) and the build's disk \(ByteSize.format(minimumBuildBytes)) more; "
                                + "free space in the pool's directory there, or name another pool with --pool")
            }
            // A marker whose volume is gone would vouch for this upload before it ends: removed first.
            if let staleMarker = try? await pool.volume(named: marker) { try? await staleMarker.delete() }
            // The file's bytes as they are (a qcow2 file stays a qcow2 file): QEMU and the overlay name its format.
            let volume: LibvirtStorageVolume
            do {
                volume = try await pool.createVolume(StorageVolumeSpec(name: name, capacityBytes: fileBytes, format: .raw))
                try? await reclaim?.delete()
            } catch where error.code == .alreadyExists {
                try? await reclaim?.delete()
                continue  // another build created it a moment ago: wait for that one's upload
            } catch {
                try? await reclaim?.delete()
                throw error
            }
            let uploadStart = clock.now
            do {
                try await volume.upload(from: path)
                _ = try await pool.createVolume(StorageVolumeSpec(name: marker, capacityBytes: 0, format: .raw))
            } catch {
                try? await volume.delete()
                throw error
            }
            let seconds = (clock.now - uploadStart).inSeconds
            events("uploaded the source to \(host) as \(name): \(ByteSize.format(fileBytes)) in \(DurationText.format(clock.now - uploadStart))"
                   + (seconds > 0 ? String(format: " (%.1f MiB/s)", Double(fileBytes) / 1_048_576 / seconds) : ""))
            return volume
        }
        throw KilnError(.external, "the source volume \(name) on \(host) was neither completed nor uploaded again after six looks; "
                        + "if no other build uses it, remove it and \(reclaimName) (virsh vol-delete --pool \(pool.name) NAME) and build again")
    }

    /// What a build's overlay is given room for, beyond the source, before the upload starts.
    static let minimumBuildBytes: UInt64 = 1 << 30

    enum UploadWait: Equatable {
        case completed
        case gone
        /// Unchanged for the whole wait, as last read.
        case stalled(StorageVolumeStamp)
    }

    /// Waits while another build uploads `volume`: until its `marker` exists, the volume is gone, or its file has not
    /// changed for `stalledAfter`.
    static func awaitUpload(of volume: LibvirtStorageVolume, marker: String, in pool: LibvirtStoragePool,
                            stalledAfter: Duration) async throws(KilnError) -> UploadWait {
        let clock = ContinuousClock()
        var last: StorageVolumeStamp?
        var lastChange = clock.now
        while true {
            if (try? await pool.volume(named: marker)) != nil { return .completed }
            // A deleted volume cannot be described: its uploader gave up and removed it, or another build reclaimed it.
            guard let stamp = try? await volume.stamp() else { return .gone }
            if stamp != last {
                last = stamp
                lastChange = clock.now
            } else if clock.now - lastChange >= stalledAfter {
                return .stalled(stamp)
            }
            do { try await Task.sleep(for: .milliseconds(500)) } catch { throw KilnError(.cancelled, "cancelled while waiting for another build's upload") }
        }
    }

    /// The NoCloud seed, made here, as a volume of its own.
    func uploadSeed(from localPath: String) async throws(KilnError) {
        let bytes = FileSize.bytes(localPath)
        let volume = try await pool.createVolume(StorageVolumeSpec(name: "kiln-\(runID)-seed.iso", capacityBytes: bytes, format: .raw))
        seed = volume
        try await volume.upload(from: localPath)
    }

    /// The overlay's bytes, downloaded to `localPath` and put on the local copy of the source (the same file whose
    /// sha256 named the volume), so the outputs are made here.
    func fetchOverlay(to localPath: String, source image: SourceImage, events: @escaping @Sendable (String) -> Void) async throws(KilnError) {
        let clock = ContinuousClock()
        let start = clock.now
        try await overlay.download(to: localPath)
        let bytes = FileSize.bytes(localPath)
        try await Subprocess.check("qemu-img", ["rebase", "-u", "-f", "qcow2", "-F", image.format, "-b", image.path, localPath], timeout: .seconds(120))
        events("fetched the build's overlay from the host: \(ByteSize.format(bytes)) in \(DurationText.format(clock.now - start)), on \(image.displayName) here")
    }

    /// Deletes the build's volumes and files in the pool (the source volume stays for later builds).
    func delete() async {
        try? await overlay.delete()
        try? await seed?.delete()
        try? await pool.refresh()
        for name in ["kiln-\(runID)-console.log", "kiln-\(runID)-nvram.fd"] {
            if let file = try? await pool.volume(named: name) { try? await file.delete() }
        }
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
