import Foundation
import KilnGuest
import KilnLibvirt
import KilnSupport

/// The build VM: a qcow2 overlay on the untouched source, a transient libvirt domain, and the guest's SSH or
/// WinRM port forwarded to 127.0.0.1. It hands out an `endpoint` and a state, never a session: a communicator
/// (KilnSSH, KilnWinRM) turns the endpoint into one. `boot` rolls back whatever it started when a later step fails;
/// `teardown` is idempotent and safe whether or not boot got far. What the machine holds (fabric, libvirt
/// connection, domain) is in its `MachineState`; waiting for the image's agent to provision the guest is in
/// BuildMachine+Provisioning.swift, powering it off in BuildMachine+Power.swift, checkpoints in MachineCheckpoint.swift,
/// the disks and credentials in BuildMachine+Disks.swift, a VM on a remote libvirt host in BuildMachine+Remote.swift.
public final class BuildMachine: @unchecked Sendable {
    public let options: MachineOptions
    public let keyPair: SSHKeyPair
    public let hostKeyPin: HostKeyPin
    /// The certificate a Windows guest's WinRM listener presented when it first answered.
    public let certificatePin = CertificatePin()
    /// The port on this machine's 127.0.0.1 that reaches the guest's SSH (22) or WinRM HTTPS (5986) port: QEMU's
    /// forward, or on a remote host the SSH tunnel to QEMU's forward there.
    public internal(set) var sshPort: Int = 0
    /// The port QEMU forwards to the guest on its host's 127.0.0.1 (`sshPort`, unless the host is remote).
    var forwardedPort: Int = 0
    /// On a remote host: the build's volumes in its pool, and the tunnel to the guest's port.
    var remoteDisks: RemoteDisks?
    var tunnel: SSHTunnel?
    public internal(set) var inspection: OfflineInspection?
    public internal(set) var credentialsInjectedOffline = false
    /// The import's lease layer the overlay sits on, when the Azure Linux agent provisions the image.
    public internal(set) var leaseLayer: LeaseLayer?
    /// Where the machine's progress goes (the build's log).
    public let events: @Sendable (String) -> Void
    /// Starting, started or torn down, with what the machine holds in each.
    private let state = Locked<MachineState>(.starting(MachineState.Starting()))
    /// A Linux guest's Azure endpoints (wireserver, instance metadata), answered on the host; nil for Windows
    /// guests, on a libvirt other than the embedded driver, and once torn down.
    public var fabric: AzureFabric? { state.current.fabric }
    /// How the guest got its build user, once decided.
    public internal(set) var provisioning: LinuxProvisioning?
    /// The first login of a fresh boot waits for the Azure Linux agent's Ready report: the agent creates the user
    /// before it regenerates the SSH host keys and restarts sshd, so a login in between would pin a key the guest
    /// is about to replace.
    var awaitsAgentReady = false
    /// What Kiln found in the image that decided it (for messages when logins keep failing).
    public internal(set) var provisioningFindings: String?
    var connection: LibvirtConnection? { state.current.connection }
    var domain: LibvirtDomain? { state.current.domain }

    /// The writable overlay the guest runs on now; a snapshot moves the guest to a new one.
    public internal(set) var overlayPath: String
    public var consolePath: String { options.runDirectory + "/console.log" }
    public var seedPath: String { options.runDirectory + "/seed.iso" }
    public var nvramPath: String { options.runDirectory + "/nvram.fd" }
    public var privateKeyPath: String { options.runDirectory + "/id_ed25519" }
    public var username: String { options.username }

    /// The NoCloud seed the domain has attached: this run's, or the one a resumed checkpoint chain booted with.
    var attachedSeedPath: String?
    var domainUUID: String?
    /// `kiln-<runID>`; a guest resumed from a checkpoint keeps the name of the run that first booted it (libvirt
    /// resumes a memory image only under the name it was saved with).
    public internal(set) var domainName: String

    init(options: MachineOptions, keyPair: SSHKeyPair = SSHKeyPair(), hostKeyPin: HostKeyPin = HostKeyPin(),
                 events: @escaping @Sendable (String) -> Void) {
        self.options = options
        overlayPath = options.overlayPath ?? options.runDirectory + "/disk.qcow2"
        domainName = options.domainName
        self.keyPair = keyPair
        self.hostKeyPin = hostKeyPin
        self.events = events
    }

    /// Changes the machine's state under its lock; a change that does not fit the state throws.
    func transition(_ change: (inout MachineState) throws(KilnError) -> Void) throws(KilnError) {
        let failure = state.withLock { current -> KilnError? in
            do throws(KilnError) {
                try change(&current)
                return nil
            } catch {
                return error
            }
        }
        if let failure { throw failure }
    }

    /// The started state with `domain`; a domain the machine cannot take (torn down meanwhile) is destroyed.
    func started(with domain: LibvirtDomain) async throws(KilnError) {
        do {
            try transition { state throws(KilnError) in try state.start(domain) }
        } catch {
            await domain.destroy()
            throw error
        }
    }

    /// Where a communicator reaches the guest: its SSH port with the build key, or (Windows) its WinRM HTTPS port
    /// with the build's administrator, whose uploads the guest fetches from the host's loopback at 10.0.2.2.
    public var endpoint: GuestEndpoint {
        if let windows = options.windows {
            return GuestEndpoint(port: sshPort, username: windows.username,
                                 access: .winRM(password: windows.password, certificate: certificatePin, hostAddressForGuest: "10.0.2.2"))
        }
        return GuestEndpoint(port: sshPort, username: options.username, access: .ssh(key: keyPair, hostKey: hostKeyPin))
    }

    /// Creates the overlay, gives the guest its credentials and starts the domain.
    public static func boot(_ options: MachineOptions, events: @escaping @Sendable (String) -> Void) async throws(KilnError) -> BuildMachine {
        let machine = BuildMachine(options: options, events: events)
        do {
            try await machine.start()
        } catch {
            await machine.teardown(keepFiles: false)
            throw error
        }
        return machine
    }

    private func start() async throws(KilnError) {
        // Mode 0700: the build key, the disks and the console log inside are the user's alone.
        try PrivateDirectory.createPath(options.runDirectory)
        if domainUUID == nil { domainUUID = UUID().uuidString.lowercased() }
        if let remote = options.remote {
            try await startRemote(remote)
            return
        }
        sshPort = try PortAllocator.reserve(options.sshPort)
        forwardedPort = sshPort
        try startFabric()
        let useSeed = try await connectLibvirt { () async throws(KilnError) -> Bool in try await prepareDisks() }
        try await startDomain(withSeed: useSeed)
    }

    /// Azure's addresses on the guest's network (Linux guests on the embedded driver): a 168.0.0.0/7 user-mode
    /// network holds both the wireserver and the instance metadata address, so QEMU can hand the guest's
    /// connections to them to the fabric (docs/azure-presentation.md).
    static let azureNetworkOptions = ["net=168.0.0.0/7", "host=168.0.0.2", "dns=168.0.0.3", "dhcpstart=168.0.0.15"]
    /// The SMBIOS chassis asset tag of every Azure VM, which cloud-init's ds-identify looks for.
    public static let azureChassisAssetTag = "7783-7084-3265-9085-8269-3286-77"

    /// Starts the fabric of a Linux guest on the embedded driver (whose QEMU may spawn the `socat` that joins a
    /// guest connection to it; a daemon's QEMU runs under a seccomp sandbox that kills it for that).
    func startFabric() throws(KilnError) {
        guard options.windows == nil, options.libvirtURI == nil, let uuid = domainUUID else { return }
        var socket = options.runDirectory + "/azure.sock"
        // A long run directory: the user's private runtime directory instead, never a guessable name in /tmp.
        if socket.utf8.count > 100 { socket = try RuntimeDirectory.make() + "/azure-\(options.runID)-\(getpid()).sock" }
        let metadata = options.instanceMetadata ?? InstanceMetadata(vmSize: options.size.name)
        let events = self.events
        let fabric = AzureFabric(socketPath: socket, metadata: metadata, vmName: domainName, vmID: uuid, username: options.username,
                                 publicKey: keyPair.openSSHPublicKey(comment: "kiln-\(options.runID)"), log: { events($0) })
        try fabric.start()
        do {
            try transition { state throws(KilnError) in try state.whileStarting("start the Azure fabric") { $0.fabric = fabric } }
        } catch {
            fabric.stop()
            throw error
        }
    }

    /// Opens libvirt (on a process's first VM: starts the embedded driver) while `prepare` gets the disks ready.
    func connectLibvirt<T>(while prepare: () async throws(KilnError) -> T) async throws(KilnError) -> T {
        let uri: String
        if let explicit = options.libvirtURI {
            if let host = LibvirtURI.remoteHost(explicit), options.remote == nil {
                throw KilnError(.unsupported, "--connect \(explicit): a VM on \(host) is run only by a build (kiln build, kiln template run), which keeps its disks in the host's storage pool; `kiln doctor --connect` checks the host")
            }
            uri = explicit
        } else {
            uri = try EmbeddedDriver.processURI()
        }
        let connecting = Task { () async throws -> LibvirtConnection in try await LibvirtConnection.open(uri) }
        let value: T
        do {
            value = try await prepare()
        } catch {
            if let opened = try? await connecting.value { try? await hold(opened) }
            throw error
        }
        let opened: LibvirtConnection
        do {
            opened = try await connecting.value
        } catch let error as KilnError {
            throw error
        } catch {
            throw KilnError(.external, "cannot open libvirt connection \(uri)", cause: error)
        }
        try await hold(opened)
        return value
    }

    /// Keeps the libvirt connection in the starting state; one the machine cannot keep (torn down meanwhile) is closed.
    private func hold(_ opened: LibvirtConnection) async throws(KilnError) {
        do {
            try transition { state throws(KilnError) in try state.whileStarting("open libvirt") { $0.connection = opened } }
        } catch {
            await opened.close()
            throw error
        }
    }

    /// The domain as Kiln defines it: the same for a fresh boot and for a resume (libvirt requires the resumed
    /// domain's guest-visible hardware to match the saved one; paths, name and port forward may differ).
    var domainSpec: DomainSpec {
        // Windows images carry no virtio drivers (Azure's have Hyper-V ones): SATA and an e1000e NIC work inbox.
        let windows = options.windows != nil
        var disks = [DomainSpec.Disk(path: remoteDisks?.overlay.path ?? overlayPath, format: "qcow2", readOnly: false, device: windows ? .sataDisk(target: "sda") : .virtioDisk(target: "vda"))]
        if let attachedSeedPath {
            // A virtio disk, not a CD-ROM: cloud-init's ds-identify runs before udev loads CD-ROM drivers, and
            // the reference images' initramfs carries virtio only.
            disks.append(DomainSpec.Disk(path: attachedSeedPath, format: "raw", readOnly: true, device: .virtioDisk(target: "vdb")))
        }
        let hostCores = ProcessInfo.processInfo.activeProcessorCount
        let vCPUs = options.accelerator == .tcg ? min(options.size.vCPUs, hostCores) : options.size.vCPUs
        var spec = DomainSpec(name: domainName, uuid: domainUUID, accelerator: options.accelerator, vCPUs: vCPUs,
                              memoryMiB: options.size.memoryMiB, firmware: options.source.firmware,
                              nvramPath: options.source.firmware == .uefi ? (remoteDisks?.nvramPath ?? nvramPath) : nil, disks: disks,
                              serialLogPath: remoteDisks?.consolePath ?? consolePath,
                              portForwards: [DomainSpec.PortForward(hostPort: forwardedPort, guestPort: windows ? 5986 : 22)],
                              windowsHardware: windows)
        if let fabric {
            spec.chassisAssetTag = Self.azureChassisAssetTag
            spec.userNetworkOptions = Self.azureNetworkOptions + fabric.guestForwards.map { $0.replacingOccurrences(of: ",", with: ",,") }
        }
        if options.isolateNetwork {
            spec.userNetworkOptions.append("restrict=on")
        }
        if let uri = options.libvirtURI, LibvirtURI.isLocalSystem(uri) {
            spec.processOwner = .current
        }
        return spec
    }

    func startDomain(withSeed: Bool) async throws(KilnError) {
        guard let connection else { throw KilnError(.internalError, "no libvirt connection") }
        attachedSeedPath = withSeed ? (remoteDisks?.seed?.path ?? seedPath) : nil
        let spec = domainSpec
        try? spec.xml.write(toFile: options.runDirectory + "/domain.xml", atomically: true, encoding: .utf8)
        let on = options.remote.map { " on \($0.host)" } ?? ""
        events("booting \(domainName)\(on): \(options.size.name) (\(spec.vCPUs) vCPU, \(options.size.memoryMiB) MiB), \(options.source.firmware == .uefi ? "UEFI" : "BIOS"), \(options.accelerator.rawValue.uppercased()), \(options.windows == nil ? "ssh" : "winrm https") 127.0.0.1:\(forwardedPort)\(on)")
        do {
            try await started(with: connection.createTransientDomain(xml: spec.xml, autodestroy: options.libvirtURI != nil))
            EmbeddedDriver.keepCapabilities(uri: connection.uri)
        } catch {
            if error.code == .portUnavailable, options.remote == nil {
                throw KilnError(.invalidArgument, "port \(sshPort) on 127.0.0.1 is already in use; QEMU could not forward it to the guest's SSH port", cause: error)
            }
            throw error
        }
    }

    /// Whether the domain's QEMU process is still there.
    public func isRunning() async -> Bool {
        guard let domain else { return false }
        return await domain.state().isActive
    }

    /// The SHA-256 of the certificate the guest's WinRM listener presented when it first answered (pinned for the
    /// rest of the build, and in a kept VM's command line).
    public var winRMCertificateSHA256: [UInt8]? { certificatePin.sha256 }

    /// Destroys the domain, closes libvirt and, unless kept, removes the run's files.
    /// Idempotent; runs on success, failure, timeout and cancellation.
    public func teardown(keepFiles: Bool) async {
        let held = state.withLock { current -> MachineState in
            defer { current = .tornDown }
            return current
        }
        switch held {
        case .tornDown:
            return
        case .starting(let starting):
            await remoteDisks?.delete()
            await starting.connection?.close()
            starting.fabric?.stop()
        case .started(let started):
            tunnel?.close()
            await started.domain.destroy()
            await remoteDisks?.delete()
            await started.connection.close()
            started.fabric?.stop()
        }
        if !keepFiles {
            for path in [overlayPath, seedPath, nvramPath, privateKeyPath, options.runDirectory + "/domain.xml", options.runDirectory + "/ssh-tunnel.log"] {
                try? FileManager.default.removeItem(atPath: path)
            }
        }
    }
}
