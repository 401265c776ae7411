import Foundation
import KilnLibvirt
import KilnSupport

/// A build VM on another libvirt host (`RemoteHost`, docs/remote-hosts.md): its disks are volumes there, its guest
/// port is reached through an SSH tunnel, and its overlay comes back here for the outputs.
extension BuildMachine {
    /// On a remote host: the connection first (the disks are made through it), then the domain on a port of the
    /// host's loopback (another one if QEMU finds it taken), then the tunnel to it.
    func startRemote(_ remote: RemoteHost) async throws(KilnError) {
        guard options.windows == nil else {
            throw KilnError(.unsupported, "--connect \(remote.uri): Windows builds prepare the image with libguestfs on this machine before the first boot, which a disk on \(remote.host) does not allow; build Windows templates on the embedded driver")
        }
        if let explicit = options.sshPort {
            throw KilnError(.invalidArgument, "--ssh-port \(explicit): on a remote host the guest's port is forwarded on the host's loopback and reached through SSH; let Kiln choose it")
        }
        _ = try await connectLibvirt { () async throws(KilnError) -> Bool in true }
        let useSeed = try await prepareDisks()
        try await launchRemote(remote) { () async throws(KilnError) in try await self.startDomain(withSeed: useSeed) }
    }

    /// Resumes a checkpoint taken on this remote host: this run's overlay on its layer there, its seed uploaded
    /// again from here, the guest restored from the memory image in the pool.
    func startResumedRemote(_ checkpoint: MachineCheckpoint, files: RemoteCheckpointFiles, remote: RemoteHost) async throws(KilnError) {
        _ = try await connectLibvirt { () async throws(KilnError) -> Bool in true }
        try writePrivateKey()
        guard let connection else { throw KilnError(.internalError, "no libvirt connection to \(remote.host)") }
        let disks = try await RemoteDisks.prepareResumed(remote, connection: connection, files: files, capacityBytes: try diskCapacityBytes(),
                                                         runID: options.runID, overlayName: remoteVolumeName(forOverlay: overlayPath), events: events)
        remoteDisks = disks
        if checkpoint.hasSeed {
            try await disks.uploadSeed(from: checkpoint.seedPath)
            attachedSeedPath = disks.seed?.path
        }
        try await launchRemote(remote) { () async throws(KilnError) in
            try await self.startRestored(checkpoint, connection: connection)
            self.events("resumed \(self.domainName) on \(remote.host) from \(checkpoint.memoryPath) there")
        }
    }

    /// Starts the domain (`start`) with its guest port on a free port of the host's loopback (another one if QEMU
    /// finds it taken), then the tunnel to it.
    private func launchRemote(_ remote: RemoteHost, start: () async throws(KilnError) -> Void) async throws(KilnError) {
        var attempt = 0
        while true {
            attempt += 1
            forwardedPort = Int.random(in: 40000...59999)
            do {
                try await start()
                break
            } catch where error.code == .portUnavailable && attempt < 5 {
                events("port \(forwardedPort) on \(remote.host)'s loopback is taken; another one")
            }
        }
        let opened = try await SSHTunnel.open(to: remote, remotePort: forwardedPort, runDirectory: options.runDirectory)
        tunnel = opened
        sshPort = opened.localPort
        events("the guest's port \(forwardedPort) on \(remote.host)'s loopback is 127.0.0.1:\(sshPort) here, through ssh \(remote.destination)")
    }

    /// The volume on the remote host for an overlay path here: a checkpoint folder's `disk.qcow2` is
    /// `kiln-ckpt-<folder>.qcow2`, the run directory's is `kiln-<runID>-disk.qcow2`.
    func remoteVolumeName(forOverlay path: String) -> String {
        let folder = (path as NSString).deletingLastPathComponent
        guard (path as NSString).lastPathComponent == "disk.qcow2", folder != options.runDirectory else { return "kiln-\(options.runID)-disk.qcow2" }
        return RemoteCheckpointFiles.volumeName(folder: (folder as NSString).lastPathComponent, kind: "qcow2")
    }

    /// On a remote host, brings the powered-off guest's disk here: its overlay downloaded to `overlayPath` and put on
    /// the local source, so the outputs are made here as on the embedded driver. Nothing to do for a local VM.
    public func fetchDiskIfRemote() async throws(KilnError) {
        guard let remoteDisks else { return }
        try await remoteDisks.fetchOverlay(to: overlayPath, source: options.source, events: events)
    }
}
