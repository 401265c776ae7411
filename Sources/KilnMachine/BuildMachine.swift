import Foundation
import KilnGuest
import KilnLibvirt
import KilnSSH
import KilnSupport
import KilnWinRM

// A little over 400 lines: the VM's whole lifecycle (start, connect, stop, teardown) over the same private fields;
// splitting it waits for those fields to become a state enum with per-state data.

/// The build VM: a qcow2 overlay on the untouched source, a transient libvirt domain, an SSH port on 127.0.0.1.
/// `boot` rolls back whatever it started when a later step fails; `teardown` is idempotent and safe whether
/// or not boot got far.
public final class BuildMachine: @unchecked Sendable {
    public let options: MachineOptions
    public let keyPair: SSHKeyPair
    public let hostKeyPin: HostKeyPin
    public internal(set) var sshPort: Int = 0
    public private(set) var inspection: OfflineInspection?
    public private(set) var credentialsInjectedOffline = false
    /// The import's lease layer the overlay sits on, when the Azure Linux agent provisions the image.
    public private(set) var leaseLayer: LeaseLayer?
    let events: @Sendable (String) -> Void
    /// A Linux guest's Azure endpoints (wireserver, instance metadata), answered on the host; nil for Windows
    /// guests and on a libvirt other than the embedded driver.
    public private(set) var fabric: AzureFabric?
    /// How the guest got its build user, once decided.
    public private(set) var provisioning: LinuxProvisioning?
    /// The first login of a fresh boot waits for the Azure Linux agent's Ready report: the agent creates the user
    /// before it regenerates the SSH host keys and restarts sshd, so a login in between would pin a key the guest
    /// is about to replace.
    private var awaitsAgentReady = false
    /// What Kiln found in the image that decided it (for messages when logins keep failing).
    public private(set) var provisioningFindings: String?
    var connection: LibvirtConnection?
    var domain: LibvirtDomain?
    private let lock = NSLockLike()
    private var tornDown = false

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

    public var endpoint: SSHEndpoint {
        SSHEndpoint(port: sshPort, username: options.username, keyPair: keyPair, hostKeyPin: hostKeyPin)
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
        sshPort = try PortAllocator.reserve(options.sshPort)
        if domainUUID == nil { domainUUID = UUID().uuidString.lowercased() }
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
        self.fabric = fabric
    }

    /// Opens libvirt (on a process's first VM: starts the embedded driver) while `prepare` gets the disks ready.
    func connectLibvirt<T>(while prepare: () async throws(KilnError) -> T) async throws(KilnError) -> T {
        let uri: String
        if let explicit = options.libvirtURI { uri = explicit } else { uri = try EmbeddedDriver.processURI() }
        let connecting = Task { () async throws -> LibvirtConnection in try await LibvirtConnection.open(uri) }
        let value: T
        do {
            value = try await prepare()
        } catch {
            connection = try? await connecting.value
            throw error
        }
        do {
            connection = try await connecting.value
        } catch let error as KilnError {
            throw error
        } catch {
            throw KilnError(.external, "cannot open libvirt connection \(uri)", cause: error)
        }
        return value
    }

    /// The overlay, the build key, and the credentials: a NoCloud seed, or written offline. True when the domain
    /// needs the seed attached.
    private func prepareDisks() async throws(KilnError) -> Bool {
        try await createOverlay()
        if let windows = options.windows {
            events("preparing the Windows image with libguestfs (one appliance launch)")
            let prepared = try await OfflineProvisioner.prepareWindows(disk: overlayPath, format: "qcow2", accelerator: options.accelerator,
                                                                       answerFile: windows.answerFile, setupScript: windows.setupScript)
            events("image: \(prepared.productName), ImageState \(prepared.imageState)"
                   + (prepared.answerFileWritten ? "; answer file written (Administrator password, WinRM over HTTPS)" : ""))
            if !prepared.answerFileWritten && windows.passwordFromAnswerFile {
                throw KilnError(.invalidArgument, "the image's ImageState is \(prepared.imageState), not IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE: it is not generalized, so its first boot reads no answer file and Kiln cannot set a password. Generalize it (Sysprep /generalize /oobe), or name an account that has WinRM over HTTPS enabled with KILN_WINRM_USERNAME and KILN_WINRM_PASSWORD")
            }
            return false
        }
        try writePrivateKey()
        let credentials = BuildCredentials(username: options.username, authorizedKey: keyPair.openSSHPublicKey(comment: "kiln-\(options.runID)"))
        var chosen: LinuxProvisioning
        switch options.injection {
        case .cloudInit:
            chosen = .noCloud
        case .offline:
            try await provisionOffline(credentials, force: true)
            chosen = .offline
        case .auto:
            if let known = options.source.provisioning ?? (options.source.hasCloudInit == true ? .noCloud : nil) {
                chosen = known
                if known == .offline { try await provisionOffline(credentials, force: true) }
                if known == .waagent, leaseLayer == nil {
                    // No lease layer from the import: the agent's lease is written in the overlay, in one libguestfs
                    // launch, which also checks the image again.
                    try await provisionOffline(credentials, force: false)
                    chosen = credentialsInjectedOffline ? .offline : (inspection?.provisioning ?? .offline)
                }
            } else {
                // Unknown: one libguestfs launch inspects and, if the image needs it, writes the user offline.
                try await provisionOffline(credentials, force: false)
                chosen = credentialsInjectedOffline ? .offline : (inspection?.provisioning ?? .noCloud)
            }
        }
        provisioning = chosen
        awaitsAgentReady = chosen == .waagent
        switch chosen {
        case .noCloud:
            try await CloudInitSeed.write(to: seedPath, credentials: credentials, instanceID: "kiln-\(options.runID)", hostname: "kiln-\(options.runID)")
            events("build user \(credentials.username): cloud-init NoCloud seed")
            return true
        case .azure, .waagent:
            let agent = chosen == .azure ? "cloud-init reads only the Azure datasource" : "Azure Linux agent provisions it"
            guard fabric != nil else {
                throw KilnError(.unsupported, "the image's \(agent) (\(provisioningFindings ?? chosen.summary)); Kiln presents the build VM as Azure does only on its embedded libvirt driver, not on \(options.libvirtURI ?? "?")")
            }
            try await ISOImage.write(to: seedPath, volumeID: "OVF_ENV",
                                     files: ["ovf-env.xml": OVFEnvironment.xml(username: credentials.username, hostname: domainName,
                                                                               publicKey: credentials.authorizedKey)])
            if chosen == .azure {
                events("build user \(credentials.username): presented as Azure (ovf-env.xml, wireserver, instance metadata) for the image's cloud-init Azure datasource")
            } else {
                events("build user \(credentials.username): presented as Azure (ovf-env.xml, wireserver, instance metadata) for the image's Azure Linux agent; the wireserver's address, which QEMU's DHCP server cannot send, written as a cached DHCP lease (\(writtenLeases.joined(separator: ", "))\(leaseLayer.map { ", in the lease layer made at import, \($0.path)" } ?? ""))")
            }
            return true
        case .offline:
            return false
        }
    }

    /// The DHCP leases Kiln wrote for the Azure Linux agent: in the lease layer, or in this build's overlay.
    var writtenLeases: [String] { leaseLayer?.leases ?? inspection?.writtenLeases ?? [] }

    private func createOverlay() async throws(KilnError) {
        let source = options.source
        var arguments = ["create", "-q", "-f", "qcow2", "-F", source.format, "-b", source.path, overlayPath]
        // An image the Azure Linux agent provisions boots on the lease layer its import made (`LeaseLayer`).
        if options.windows == nil, options.injection == .auto, source.provisioning == .waagent, let layer = source.leaseLayer {
            if layer.isUsable(over: source) {
                leaseLayer = layer
                arguments = ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", layer.path, overlayPath]
            } else {
                events("note: the lease layer \(layer.path) is missing or older than \(source.path); the leases are written for this build instead (kiln image remove and import again to make a new layer)")
            }
        }
        if options.osDiskSizeGB > 0 {
            let requested = UInt64(options.osDiskSizeGB) << 30
            guard requested >= source.virtualSizeBytes else {
                let sourceGiB = Double(source.virtualSizeBytes) / Double(1 << 30)
                throw KilnError(.invalidArgument, "expected osDiskSizeGB of at least the source's size (\(String(format: "%.1f", sourceGiB)) GiB), found \(options.osDiskSizeGB): a disk can only grow")
            }
            if requested > source.virtualSizeBytes { arguments.append(String(requested)) }
        }
        events("overlay \(overlayPath) on \(source.displayName)" + (leaseLayer.map { " through its lease layer \($0.path)" } ?? "") + " (the source is opened read-only)")
        try await Subprocess.check("qemu-img", arguments, timeout: .seconds(120))
    }

    func writePrivateKey() throws(KilnError) {
        let contents = keyPair.openSSHPrivateKeyFile(comment: "kiln-\(options.runID)")
        try SecretFile.write(Data(contents.utf8), to: privateKeyPath)
    }

    private func provisionOffline(_ credentials: BuildCredentials, force: Bool) async throws(KilnError) {
        events("inspecting the image with libguestfs (one appliance launch)")
        let result = try await OfflineProvisioner.inspectAndProvision(disk: overlayPath, format: "qcow2", accelerator: options.accelerator,
                                                                      credentials: credentials, forceOffline: force)
        inspection = result
        credentialsInjectedOffline = result.injectedCredentials
        provisioningFindings = result.configuration?.description
        if let notice = result.configuration?.notice { events("note: \(notice)") }
        events("image: \(result.productName) (\(result.osType)), " + (result.configuration?.description ?? "cloud-init \(result.hasCloudInit ? "present" : "absent")")
               + (result.injectedCredentials ? "; build user \(credentials.username) written offline" : ""))
    }

    /// The domain as Kiln defines it: the same for a fresh boot and for a resume (libvirt requires the resumed
    /// domain's guest-visible hardware to match the saved one; paths, name and port forward may differ).
    var domainSpec: DomainSpec {
        // Windows images carry no virtio drivers (Azure's have Hyper-V ones): SATA and an e1000e NIC work inbox.
        let windows = options.windows != nil
        var disks = [DomainSpec.Disk(path: overlayPath, format: "qcow2", readOnly: false, device: windows ? .sataDisk(target: "sda") : .virtioDisk(target: "vda"))]
        if let attachedSeedPath {
            // A virtio disk, not a CD-ROM: cloud-init's ds-identify runs before udev loads CD-ROM drivers, and
            // the reference images' initramfs carries virtio only.
            disks.append(DomainSpec.Disk(path: attachedSeedPath, format: "raw", readOnly: true, device: .virtioDisk(target: "vdb")))
        }
        let hostCores = ProcessInfo.processInfo.activeProcessorCount
        let vCPUs = options.accelerator == .tcg ? min(options.size.vCPUs, hostCores) : options.size.vCPUs
        var spec = DomainSpec(name: domainName, uuid: domainUUID, accelerator: options.accelerator, vCPUs: vCPUs,
                              memoryMiB: options.size.memoryMiB, firmware: options.source.firmware,
                              nvramPath: options.source.firmware == .uefi ? nvramPath : nil, disks: disks, serialLogPath: consolePath,
                              portForwards: [DomainSpec.PortForward(hostPort: sshPort, guestPort: windows ? 5986 : 22)],
                              windowsHardware: windows)
        if let fabric {
            spec.chassisAssetTag = Self.azureChassisAssetTag
            spec.userNetworkOptions = Self.azureNetworkOptions + fabric.guestForwards.map { $0.replacingOccurrences(of: ",", with: ",,") }
        }
        if options.isolateNetwork {
            spec.userNetworkOptions.append("restrict=on")
        }
        return spec
    }

    private func startDomain(withSeed: Bool) async throws(KilnError) {
        guard let connection else { throw KilnError(.internalError, "no libvirt connection") }
        attachedSeedPath = withSeed ? seedPath : nil
        let spec = domainSpec
        try? spec.xml.write(toFile: options.runDirectory + "/domain.xml", atomically: true, encoding: .utf8)
        events("booting \(domainName): \(options.size.name) (\(spec.vCPUs) vCPU, \(options.size.memoryMiB) MiB), \(options.source.firmware == .uefi ? "UEFI" : "BIOS"), \(options.accelerator.rawValue.uppercased()), \(options.windows == nil ? "ssh" : "winrm https") 127.0.0.1:\(sshPort)")
        do {
            domain = try await connection.createTransientDomain(xml: spec.xml, autodestroy: options.libvirtURI != nil)
            EmbeddedDriver.keepCapabilities(uri: connection.uri)
        } catch {
            if error.code == .portUnavailable {
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

    /// Waits for SSH (tolerating refused and reset connections while the guest boots), failing at once if the
    /// VM stops. A guest that keeps rejecting the build key long after its agent said it was provisioned (or for
    /// `rejectionLimit` in any case) fails early; either failure says what Kiln found in the image, what it
    /// presented, and what the guest reported.
    public func waitForSSH(timeout: Duration, rejectionLimit: Duration = .seconds(300)) async throws(KilnError) -> SSHSession {
        let clock = ContinuousClock()
        let start = clock.now
        let reported = Locked(ContinuousClock.now)
        let rejectedSince = Locked<ContinuousClock.Instant?>(nil)
        let events = self.events
        let port = sshPort
        let fabric = self.fabric
        if awaitsAgentReady, let fabric {
            try await waitForAgentReady(fabric, timeout: timeout)
            awaitsAgentReady = false
        }
        do {
            return try await SSHSession.waitForConnection(endpoint, timeout: timeout - (clock.now - start), progress: { attempt, elapsed, error in
                let rejected = error.code == .authenticationRejected
                rejectedSince.withLock { since in
                    if !rejected { since = nil } else if since == nil { since = .now }
                }
                let due = reported.withLock { last -> Bool in
                    guard ContinuousClock.now - last >= .seconds(15) else { return false }
                    last = .now
                    return true
                }
                if due { events("waiting for SSH on 127.0.0.1:\(port): \(DurationText.format(elapsed)) of \(DurationText.format(timeout)) (\(error.message))") }
            }, abort: { [weak self] in
                guard let self else { return KilnError(.cancelled, "machine gone") }
                guard await self.isRunning() else {
                    return KilnError(.external, "the VM stopped while waiting for SSH after \(DurationText.format(clock.now - start)); last console lines:\n\(self.consoleTail(lines: 15))")
                }
                if let since = rejectedSince.current {
                    let ready = fabric?.healthReports.contains { $0.state == "Ready" } == true
                    let limit = ready ? min(rejectionLimit, .seconds(120)) : rejectionLimit
                    if ContinuousClock.now - since >= limit {
                        return KilnError(.external, "the guest's sshd has rejected the build key for user \(self.username) for \(DurationText.format(limit))"
                                         + (ready ? " after its agent reported that provisioning had finished" : "")
                                         + "; it will not accept it. " + self.provisioningDiagnosis)
                    }
                }
                return nil
            })
        } catch {
            guard error.code == .timeout else { throw error }
            throw KilnError(.timeout, error.message + ". " + provisioningDiagnosis, cause: error.cause)
        }
    }

    /// Waits until the Azure Linux agent reports Ready to the wireserver; fails at once when it reports that
    /// provisioning failed, or when the VM stops.
    private func waitForAgentReady(_ fabric: AzureFabric, timeout: Duration) async throws(KilnError) {
        let clock = ContinuousClock()
        let start = clock.now
        var lastReported = start
        while true {
            let reports = fabric.healthReports
            if reports.contains(where: { $0.state == "Ready" }) { return }
            if let failed = reports.last(where: { $0.state != "Ready" && $0.subStatus == "ProvisioningFailed" }) {
                throw KilnError(.external, "the guest's Azure Linux agent reported that provisioning failed: \(failed.description ?? failed.state). " + provisioningDiagnosis)
            }
            guard await isRunning() else {
                throw KilnError(.external, "the VM stopped while its Azure Linux agent was provisioning, after \(DurationText.format(clock.now - start)); last console lines:\n\(consoleTail(lines: 15))")
            }
            let elapsed = clock.now - start
            if elapsed >= timeout {
                throw KilnError(.timeout, "Timeout waiting for SSH: the guest's Azure Linux agent did not report Ready within \(DurationText.format(timeout)). " + provisioningDiagnosis)
            }
            if clock.now - lastReported >= .seconds(15) {
                lastReported = clock.now
                events("waiting for the Azure Linux agent to provision the build user and report Ready: \(DurationText.format(elapsed)) of \(DurationText.format(timeout))")
            }
            try? await Task.sleep(for: .seconds(1))
            if Task.isCancelled { throw KilnError(.cancelled, "cancelled while waiting for the Azure Linux agent") }
        }
    }

    /// What Kiln found in the image, what it presented, what the guest reported, and what to do.
    public var provisioningDiagnosis: String {
        var parts: [String] = []
        if let provisioningFindings { parts.append("The image: \(provisioningFindings).") }
        switch provisioning {
        case .noCloud?:
            parts.append("Kiln attached a cloud-init NoCloud seed for user \(username); if the image's cloud-init does not read NoCloud, import it with `kiln image import` (which inspects its datasource list) or pass --inject offline.")
        case .azure?, .waagent?:
            let reports = fabric?.healthReports ?? []
            let said = reports.last.map { "the guest last reported \($0.state)" + ($0.description.map { " (\($0))" } ?? "") } ?? "the guest never reported to the wireserver"
            let agent = provisioning == .azure ? "The console log (\(consolePath)) shows cloud-init's Azure datasource at work."
                : "Kiln wrote the wireserver's address as a DHCP lease (\(writtenLeases.joined(separator: ", "))); the agent writes its log to /var/log/waagent.log in the guest, and the console log (\(consolePath)) shows the boot."
            parts.append("Kiln presented the VM as Azure (asset tag, ovf-env.xml for user \(username), wireserver, instance metadata; \(fabric?.requests ?? 0) requests answered); \(said). \(agent)")
        case .offline?:
            parts.append("Kiln wrote user \(username) and its key into the image offline; check that the image's sshd allows public-key logins.")
        case nil:
            break
        }
        return parts.joined(separator: " ")
    }

    /// The WinRM endpoint a Windows guest answers on (its HTTPS port forwarded to 127.0.0.1).
    public var winRMOptions: WinRMOptions? {
        guard let windows = options.windows else { return nil }
        return WinRMOptions(endpoint: WinRMEndpoint(secure: true, host: "127.0.0.1", port: sshPort), username: windows.username,
                            password: windows.password, auth: .ntlm, insecure: true)
    }

    /// Waits for WinRM over HTTPS (tolerating refusals while Windows boots and runs setup), failing at once if
    /// the VM stops. Uploads are then served from the host for the guest to fetch through 10.0.2.2.
    public func waitForWinRM(timeout: Duration) async throws(KilnError) -> WinRMSession {
        guard let options = winRMOptions else { throw KilnError(.internalError, "not a Windows guest") }
        let clock = ContinuousClock()
        let start = clock.now
        let events = self.events
        let session = try await WinRMSession.waitUntilReady(options, timeout: timeout, hostAddressForGuest: "10.0.2.2", progress: { events($0) },
                                                     abort: { [weak self] in
            guard let self else { return KilnError(.cancelled, "machine gone") }
            guard await self.isRunning() else {
                return KilnError(.external, "the VM stopped while waiting for WinRM after \(DurationText.format(clock.now - start)); last console lines:\n\(self.consoleTail(lines: 15))")
            }
            return nil
        })
        winRMCertificateSHA256 = session.client.options.pinnedCertificateSHA256
        return session
    }

    /// The SHA-256 of the certificate the guest's WinRM listener presented when it first answered (pinned for the
    /// rest of the build, and in a kept VM's command line).
    public private(set) var winRMCertificateSHA256: [UInt8]?

    /// The last lines of the serial console, without terminal escapes.
    public func consoleTail(lines: Int) -> String {
        guard let data = FileManager.default.contents(atPath: consolePath) else { return "(no console output)" }
        let text = String(decoding: data.suffix(64 * 1024), as: UTF8.self)
        let cleaned = text.replacingOccurrences(of: "\u{1B}\\[[0-9;?]*[A-Za-z]", with: "", options: .regularExpression)
            .replacingOccurrences(of: "\r", with: "")
        return cleaned.split(separator: "\n", omittingEmptySubsequences: true).suffix(lines).joined(separator: "\n")
    }

    /// Waits for a guest that is powering itself off. False if it is still running after `timeout`.
    public func waitForStop(timeout: Duration) async -> Bool {
        guard let domain else { return true }
        let clock = ContinuousClock()
        let start = clock.now
        while clock.now - start < timeout {
            if !(await domain.state().isActive) {
                events("the guest powered off after \(DurationText.format(clock.now - start))")
                return true
            }
            try? await Task.sleep(for: .milliseconds(500))
        }
        return false
    }

    /// Asks the guest to power off (through `session` if given, else ACPI), waits up to `timeout`, then forces it.
    /// Returns true when the guest stopped by itself.
    @discardableResult
    public func shutdown(session: (any GuestSession)?, timeout: Duration) async -> Bool {
        guard let domain, await domain.state().isActive else { return true }
        if let session {
            events("asking the guest to power off")
            _ = try? await session.exec("sudo -n systemctl poweroff || sudo -n poweroff || sudo -n shutdown -h now")
            await session.close()
        } else {
            events("asking the guest to power off (ACPI)")
            try? await domain.requestShutdown()
        }
        let clock = ContinuousClock()
        let start = clock.now
        var lastACPI = start
        while clock.now - start < timeout {
            if !(await domain.state().isActive) {
                events("the guest powered off after \(DurationText.format(clock.now - start))")
                return true
            }
            // ACPI may arrive before the guest listens: repeat it now and then.
            if clock.now - lastACPI > .seconds(20) {
                try? await domain.requestShutdown()
                lastACPI = clock.now
            }
            try? await Task.sleep(for: .milliseconds(500))
        }
        events("the guest did not power off within \(DurationText.format(timeout)); forcing it off")
        await domain.destroy()
        return false
    }

    /// Destroys the domain, closes libvirt and, unless kept, removes the run's files.
    /// Idempotent; runs on success, failure, timeout and cancellation.
    public func teardown(keepFiles: Bool) async {
        let first = lock.withLock { () -> Bool in
            defer { tornDown = true }
            return !tornDown
        }
        guard first else { return }
        if let domain { await domain.destroy() }
        domain = nil
        await connection?.close()
        connection = nil
        fabric?.stop()
        if !keepFiles {
            for path in [overlayPath, seedPath, nvramPath, privateKeyPath, options.runDirectory + "/domain.xml"] {
                try? FileManager.default.removeItem(atPath: path)
            }
        }
    }
}
