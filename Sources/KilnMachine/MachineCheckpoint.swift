import Foundation
import KilnGuest
import KilnLibvirt
import KilnSupport

/// A running build VM frozen to files: its memory and device state (a libvirt memory image), its disk as a
/// read-only qcow2 layer over the previous checkpoint's (or the source), and what it takes to reach it again (the
/// build user's key, the guest's host key, the NoCloud seed it booted with, the UEFI variables). Resuming one
/// continues the guest where it was saved: no boot.
public struct MachineCheckpoint: Sendable, Codable, Equatable {
    /// The folder holding this checkpoint's memory image, disk layer and UEFI variables.
    public var directory: String
    /// The folder of the chain's first checkpoint, which holds the key and the seed every later one shares.
    public var rootDirectory: String
    public var username: String
    /// The guest's SSH host key (OpenSSH public key format), pinned again on resume.
    public var hostKey: String
    public var domainUUID: String
    public var domainName: String
    public var hasSeed: Bool
    /// A guest that ran on a remote host: its memory image, disk layer and UEFI variables are volumes there, and
    /// this folder keeps the rest (and a copy of the layer once a build fetched it).
    public var remote: RemoteCheckpointFiles?

    public init(directory: String, rootDirectory: String, username: String, hostKey: String, domainUUID: String, domainName: String,
                hasSeed: Bool, remote: RemoteCheckpointFiles? = nil) {
        self.directory = directory
        self.rootDirectory = rootDirectory
        self.username = username
        self.hostKey = hostKey
        self.domainUUID = domainUUID
        self.domainName = domainName
        self.hasSeed = hasSeed
        self.remote = remote
    }

    /// The folder's name in the cache (`<key>-<runID>`).
    public var folderName: String { (directory as NSString).lastPathComponent }
    /// The memory image: in the folder, or on the remote host (a path there).
    public var memoryPath: String { remote.map { $0.poolDirectory + "/" + $0.memoryVolume } ?? directory + "/memory.save" }
    /// The disk layer; for a remote checkpoint, the copy of its volume a build fetched here (if one did).
    public var diskPath: String { directory + "/disk.qcow2" }
    public var nvramPath: String { directory + "/nvram.fd" }
    public var keyPath: String { rootDirectory + "/key.raw" }
    public var seedPath: String { rootDirectory + "/seed.img" }
}

/// The files of a checkpoint taken on a remote host (`MachineCheckpoint.remote`): volumes in the host's pool, named
/// after the checkpoint's folder here (`kiln-ckpt-<folder>.<kind>`).
public struct RemoteCheckpointFiles: Sendable, Codable, Equatable {
    public var uri: String
    public var pool: String
    /// The pool's directory on the host.
    public var poolDirectory: String
    public var memoryVolume: String
    public var diskVolume: String
    public var nvramVolume: String?
    /// The disk layers the guest stands on, the chain's first checkpoint's first and this one's last, over the source
    /// volume.
    public var layers: [RemoteLayer]
    /// What the volumes take on the host.
    public var bytes: UInt64

    public init(uri: String, pool: String, poolDirectory: String, memoryVolume: String, diskVolume: String, nvramVolume: String?,
                layers: [RemoteLayer], bytes: UInt64) {
        self.uri = uri
        self.pool = pool
        self.poolDirectory = poolDirectory
        self.memoryVolume = memoryVolume
        self.diskVolume = diskVolume
        self.nvramVolume = nvramVolume
        self.layers = layers
        self.bytes = bytes
    }

    /// The volumes of a checkpoint in `folder`: `kiln-ckpt-<folder>.memory`, `.qcow2`, `.nvram`.
    public static func volumeName(folder: String, kind: String) -> String { "kiln-ckpt-\(folder).\(kind)" }

    /// The checkpoint's own volumes (the layers below belong to its ancestors).
    public var volumes: [String] { [memoryVolume, diskVolume] + (nvramVolume.map { [$0] } ?? []) }

    /// Deletes the volumes of checkpoints the cache removed, one connection per host; `notice` hears a host that
    /// could not be reached (its volumes stay there: `virsh vol-delete` removes them).
    public static func delete(_ removed: [MachineCheckpoint], notice: @escaping @Sendable (String) -> Void) async {
        let byHost = Dictionary(grouping: removed.compactMap(\.remote), by: { "\($0.uri)\n\($0.pool)" })
        for files in byHost.values {
            guard let first = files.first else { continue }
            do {
                try await LibvirtConnection.with(first.uri) { connection throws(KilnError) in
                    let pool = try await connection.storagePool(named: first.pool)
                    try? await pool.refresh()
                    for name in files.flatMap(\.volumes) {
                        if let volume = try? await pool.volume(named: name) { try? await volume.delete() }
                    }
                }
            } catch {
                notice("the removed checkpoints' volumes stay in pool \(first.pool) on \(first.uri): \(error.message)")
            }
        }
    }
}

/// A checkpoint's disk layer on a remote host, and where a build fetching the guest's disk keeps a copy of it here
/// (in the checkpoint's folder, so later builds fetch only newer layers).
public struct RemoteLayer: Sendable, Codable, Equatable {
    public var volume: String
    public var localCopy: String

    public init(volume: String, localCopy: String) {
        self.volume = volume
        self.localCopy = localCopy
    }
}

extension BuildMachine {
    /// Checkpoints the running guest without stopping it: an external snapshot writes the guest's memory into the
    /// folder holding the current overlay, which becomes the checkpoint's read-only disk layer, and the guest runs
    /// on in `nextOverlay` (in the next checkpoint's folder, or the run directory after the last one). Guest
    /// sessions survive; the guest is paused while its memory is written. `root` is the chain's first checkpoint;
    /// nil makes this one the root (it keeps the build key and the seed the chain shares).
    public func snapshot(nextOverlay: String, root: MachineCheckpoint?) async throws(KilnError) -> MachineCheckpoint {
        guard let domain else { throw KilnError(.invalidState, "cannot checkpoint the build VM: it is not running") }
        guard let hostKey = hostKeyPin.pinnedKey else {
            throw KilnError(.invalidState, "cannot checkpoint the build VM before Kiln has connected to it")
        }
        let uuid: String
        if let domainUUID { uuid = domainUUID } else { uuid = try await domain.uuidString() }
        domainUUID = uuid
        let directory = (overlayPath as NSString).deletingLastPathComponent
        let uefi = options.source.firmware == .uefi
        var checkpoint = MachineCheckpoint(directory: directory, rootDirectory: root?.rootDirectory ?? directory, username: options.username,
                                           hostKey: hostKey, domainUUID: uuid, domainName: domainName, hasSeed: attachedSeedPath != nil)
        guard (overlayPath as NSString).lastPathComponent == "disk.qcow2", overlayPath != options.runDirectory + "/disk.qcow2" else {
            throw KilnError(.internalError, "the build VM's overlay \(overlayPath) is not in a checkpoint folder")
        }
        // On a remote host the memory image and the next overlay are files in its pool (named after the folders here).
        var memoryTarget = checkpoint.memoryPath, nextTarget = nextOverlay
        if let remoteDisks {
            memoryTarget = remoteDisks.directory + "/" + RemoteCheckpointFiles.volumeName(folder: checkpoint.folderName, kind: "memory")
            nextTarget = remoteDisks.directory + "/" + remoteVolumeName(forOverlay: nextOverlay)
        }
        var disks = ["    <disk name='vda' snapshot='external' type='file'>",
                     "      <driver type='qcow2'/>",
                     "      <source file='\(XMLText.escape(nextTarget))'/>",
                     "    </disk>"]
        if attachedSeedPath != nil { disks.append("    <disk name='vdb' snapshot='no'/>") }
        let xml = (["<domainsnapshot>",
                    "  <memory snapshot='external' file='\(XMLText.escape(memoryTarget))'/>",
                    "  <disks>"] + disks + ["  </disks>", "</domainsnapshot>"]).joined(separator: "\n")
        try await domain.createExternalSnapshot(xml: xml)
        let layer = overlayPath
        overlayPath = nextOverlay
        if let remoteDisks {
            checkpoint.remote = try await remoteDisks.checkpointTaken(folder: checkpoint.folderName, nextOverlay: (nextTarget as NSString).lastPathComponent,
                                                                    localLayerCopy: layer, uefi: uefi)
        }
        let fileManager = FileManager.default
        do {
            if remoteDisks == nil {
                try fileManager.setAttributes([.posixPermissions: 0o444], ofItemAtPath: layer)
                // The UEFI variables change only when the guest writes them (boot entries): a copy taken now matches.
                if uefi { try fileManager.copyItem(atPath: nvramPath, toPath: checkpoint.nvramPath) }
            }
            if root == nil {
                try SecretFile.write(Data(keyPair.rawRepresentation), to: checkpoint.keyPath)
                // The seed this run made here (on a remote host, the one it uploaded from here).
                if attachedSeedPath != nil { try fileManager.copyItem(atPath: seedPath, toPath: checkpoint.seedPath) }
            }
        } catch let error as KilnError {
            throw error
        } catch {
            throw KilnError(.io, "cannot write the checkpoint into \(directory): \(error.localizedDescription)")
        }
        return checkpoint
    }

    /// Boots nothing: creates this run's overlay on the checkpoint's disk layer and resumes the saved guest from
    /// its memory image, with this run's console and SSH port (and the domain name it was saved under).
    public static func resume(_ options: MachineOptions, from checkpoint: MachineCheckpoint,
                              events: @escaping @Sendable (String) -> Void) async throws(KilnError) -> BuildMachine {
        let raw: Data
        do {
            raw = try Data(contentsOf: URL(fileURLWithPath: checkpoint.keyPath))
        } catch {
            throw KilnError(.io, "cannot read the checkpoint's build key \(checkpoint.keyPath): \(error.localizedDescription)")
        }
        let machine = BuildMachine(options: options, keyPair: try SSHKeyPair(rawRepresentation: Array(raw)),
                                   hostKeyPin: try HostKeyPin(pinned: checkpoint.hostKey), events: events)
        do {
            try await machine.startResumed(checkpoint)
        } catch {
            await machine.teardown(keepFiles: false)
            throw error
        }
        return machine
    }

    private func startResumed(_ checkpoint: MachineCheckpoint) async throws(KilnError) {
        try PrivateDirectory.createPath(options.runDirectory)
        domainUUID = checkpoint.domainUUID
        domainName = checkpoint.domainName
        if let remote = options.remote {
            guard let files = checkpoint.remote else {
                throw KilnError(.notFound, "checkpoint \(checkpoint.folderName) was taken on this machine, not on \(remote.host)")
            }
            try await startResumedRemote(checkpoint, files: files, remote: remote)
            return
        }
        guard checkpoint.remote == nil else {
            throw KilnError(.notFound, "checkpoint \(checkpoint.folderName) was taken on \(checkpoint.remote?.uri ?? "a remote host")")
        }
        sshPort = try PortAllocator.reserve(options.sshPort)
        forwardedPort = sshPort
        attachedSeedPath = checkpoint.hasSeed ? checkpoint.seedPath : nil
        try startFabric()
        try await connectLibvirt { () async throws(KilnError) -> Void in
            try writePrivateKey()
            try await createOverlay(on: checkpoint.diskPath)
        }
        guard let connection else { throw KilnError(.internalError, "no libvirt connection") }
        try await restore(checkpoint, connection: connection)
    }

    /// A qcow2 overlay for this run on a checkpoint's read-only layer, and a copy of its UEFI variables.
    private func createOverlay(on layer: String) async throws(KilnError) {
        try await Subprocess.check("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", layer, overlayPath], timeout: .seconds(120))
        if options.source.firmware == .uefi {
            let saved = (layer as NSString).deletingLastPathComponent + "/nvram.fd"
            try? FileManager.default.removeItem(atPath: nvramPath)
            do {
                try FileManager.default.copyItem(atPath: saved, toPath: nvramPath)
            } catch {
                throw KilnError(.io, "cannot copy the checkpoint's UEFI variables \(saved): \(error.localizedDescription)")
            }
        }
    }

    private func restore(_ checkpoint: MachineCheckpoint, connection: LibvirtConnection) async throws(KilnError) {
        do {
            try await startRestored(checkpoint, connection: connection)
        } catch {
            if error.code == .portUnavailable {
                throw KilnError(.invalidArgument, "port \(sshPort) on 127.0.0.1 is already in use; QEMU could not forward it to the guest's SSH port", cause: error)
            }
            throw error
        }
        events("resumed \(domainName) from \(checkpoint.directory) (ssh 127.0.0.1:\(sshPort))")
    }

    /// The domain as `domainSpec` describes it, restored from the checkpoint's memory image (on the connection's
    /// host), with its XML kept in the run directory.
    func startRestored(_ checkpoint: MachineCheckpoint, connection: LibvirtConnection) async throws(KilnError) {
        let spec = domainSpec
        try? spec.xml.write(toFile: options.runDirectory + "/domain.xml", atomically: true, encoding: .utf8)
        try await started(with: connection.restoreDomain(from: checkpoint.memoryPath, xml: spec.xml, name: spec.name))
    }
}
