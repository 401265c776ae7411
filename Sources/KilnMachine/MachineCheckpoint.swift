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

    public init(directory: String, rootDirectory: String, username: String, hostKey: String, domainUUID: String, domainName: String,
                hasSeed: Bool) {
        self.directory = directory
        self.rootDirectory = rootDirectory
        self.username = username
        self.hostKey = hostKey
        self.domainUUID = domainUUID
        self.domainName = domainName
        self.hasSeed = hasSeed
    }

    public var memoryPath: String { directory + "/memory.save" }
    public var diskPath: String { directory + "/disk.qcow2" }
    public var nvramPath: String { directory + "/nvram.fd" }
    public var keyPath: String { rootDirectory + "/key.raw" }
    public var seedPath: String { rootDirectory + "/seed.img" }
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
        let checkpoint = MachineCheckpoint(directory: directory, rootDirectory: root?.rootDirectory ?? directory, username: options.username,
                                           hostKey: hostKey, domainUUID: uuid, domainName: domainName, hasSeed: attachedSeedPath != nil)
        guard (overlayPath as NSString).lastPathComponent == "disk.qcow2", overlayPath != options.runDirectory + "/disk.qcow2" else {
            throw KilnError(.internalError, "the build VM's overlay \(overlayPath) is not in a checkpoint folder")
        }
        var disks = ["    <disk name='vda' snapshot='external' type='file'>",
                     "      <driver type='qcow2'/>",
                     "      <source file='\(XMLText.escape(nextOverlay))'/>",
                     "    </disk>"]
        if attachedSeedPath != nil { disks.append("    <disk name='vdb' snapshot='no'/>") }
        let xml = (["<domainsnapshot>",
                    "  <memory snapshot='external' file='\(XMLText.escape(checkpoint.memoryPath))'/>",
                    "  <disks>"] + disks + ["  </disks>", "</domainsnapshot>"]).joined(separator: "\n")
        try await domain.createExternalSnapshot(xml: xml)
        let layer = overlayPath
        overlayPath = nextOverlay
        let fileManager = FileManager.default
        do {
            try fileManager.setAttributes([.posixPermissions: 0o444], ofItemAtPath: layer)
            // The UEFI variables change only when the guest writes them (boot entries): a copy taken now matches.
            if uefi { try fileManager.copyItem(atPath: nvramPath, toPath: checkpoint.nvramPath) }
            if root == nil {
                try SecretFile.write(Data(keyPair.rawRepresentation), to: checkpoint.keyPath)
                if let attachedSeedPath { try fileManager.copyItem(atPath: attachedSeedPath, toPath: checkpoint.seedPath) }
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
        sshPort = try PortAllocator.reserve(options.sshPort)
        forwardedPort = sshPort
        domainUUID = checkpoint.domainUUID
        domainName = checkpoint.domainName
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
        let spec = domainSpec
        try? spec.xml.write(toFile: options.runDirectory + "/domain.xml", atomically: true, encoding: .utf8)
        do {
            try await started(with: connection.restoreDomain(from: checkpoint.memoryPath, xml: spec.xml, name: spec.name))
        } catch {
            if error.code == .portUnavailable {
                throw KilnError(.invalidArgument, "port \(sshPort) on 127.0.0.1 is already in use; QEMU could not forward it to the guest's SSH port", cause: error)
            }
            throw error
        }
        events("resumed \(domainName) from \(checkpoint.directory) (ssh 127.0.0.1:\(sshPort))")
    }
}
