import Foundation
import KilnSupport

/// The build VM's disks and how its guest gets the build user: the overlay on the source (or the import's lease
/// layer, or a volume on a remote host), the build key, and a NoCloud seed, Azure's provisioning media, or
/// credentials written offline with libguestfs.
extension BuildMachine {
    /// The overlay, the build key, and the credentials: a NoCloud seed, or written offline. True when the domain
    /// needs the seed attached.
    func prepareDisks() async throws(KilnError) -> Bool {
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
        if let remote = options.remote {
            // The disk is on the host: no libguestfs here, and no Azure fabric there. The build user comes from
            // cloud-init's NoCloud seed, which the image's provisioning must read.
            let known: LinuxProvisioning? = options.injection == .cloudInit ? .noCloud : (options.source.provisioning ?? (options.source.hasCloudInit == true ? .noCloud : nil))
            guard known == .noCloud, options.injection != .offline else {
                throw KilnError(.unsupported, "--connect \(remote.uri): on a remote host Kiln gives the build user through cloud-init's NoCloud seed only, and \(options.source.displayName) is provisioned \(known.map { "by \($0.summary)" } ?? "in a way Kiln has not inspected (kiln image import inspects it)"); build it on the embedded driver")
            }
        }
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
            try await remoteDisks?.uploadSeed(from: seedPath)
            return true
        case .azure, .waagent:
            let agent = chosen == .azure ? "cloud-init reads only the Azure datasource" : "Azure Linux agent provisions it"
            guard fabric != nil else {
                throw KilnError(.unsupported, "the image's \(agent) (\(provisioningFindings ?? chosen.summary)); Kiln presents the build VM as Azure does only on its embedded libvirt driver, not on \(options.libvirtURI ?? "?") (a libvirtd starts QEMU under a seccomp sandbox that kills it when it starts the socat joining the guest to Kiln's wireserver). Build without --connect")
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

    func createOverlay() async throws(KilnError) {
        let source = options.source
        if let remote = options.remote {
            guard let connection else { throw KilnError(.internalError, "no libvirt connection to \(remote.host)") }
            remoteDisks = try await RemoteDisks.prepare(remote, connection: connection, source: source, capacityBytes: try diskCapacityBytes(),
                                                        runID: options.runID, overlayName: remoteVolumeName(forOverlay: overlayPath),
                                                        digests: SourceDigests(state: options.stateDirectory), events: events)
            return
        }
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
        let capacity = try diskCapacityBytes()
        if capacity > source.virtualSizeBytes { arguments.append(String(capacity)) }
        events("overlay \(overlayPath) on \(source.displayName)" + (leaseLayer.map { " through its lease layer \($0.path)" } ?? "") + " (the source is opened read-only)")
        try await Subprocess.check("qemu-img", arguments, timeout: .seconds(120))
    }

    /// The guest's disk size: the template's osDiskSizeGB, or the source's size. A disk can only grow.
    func diskCapacityBytes() throws(KilnError) -> UInt64 {
        let source = options.source
        guard options.osDiskSizeGB > 0 else { return source.virtualSizeBytes }
        let requested = UInt64(options.osDiskSizeGB) << 30
        guard requested >= source.virtualSizeBytes else {
            let sourceGiB = Double(source.virtualSizeBytes) / Double(1 << 30)
            throw KilnError(.invalidArgument, "expected osDiskSizeGB of at least the source's size (\(String(format: "%.1f", sourceGiB)) GiB), found \(options.osDiskSizeGB): a disk can only grow")
        }
        return requested
    }

    func writePrivateKey() throws(KilnError) {
        let contents = keyPair.openSSHPrivateKeyFile(comment: "kiln-\(options.runID)")
        try SecretFile.write(Data(contents.utf8), to: privateKeyPath)
    }

    func provisionOffline(_ credentials: BuildCredentials, force: Bool) async throws(KilnError) {
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
}
