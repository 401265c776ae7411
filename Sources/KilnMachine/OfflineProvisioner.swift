import Dispatch
import Foundation
import KilnGuestfs
import KilnSupport

/// What one libguestfs launch learned about a disk, and whether it wrote the build user into it.
public struct OfflineInspection: Sendable {
    public var osType: String
    public var distro: String
    public var productName: String
    public var hasCloudInit: Bool
    public var injectedCredentials: Bool
    /// The DHCP leases written for the Azure Linux agent (`DHCPLease`), removed again by the final cleanup.
    public var writtenLeases: [String] = []
    /// Linux: what the image's cloud-init and Azure Linux agent configuration say.
    public var configuration: ProvisioningConfiguration?

    /// How the image gets its build user (Linux).
    public var provisioning: LinuxProvisioning? { configuration?.provisioning }
}

/// Inspects a disk with libguestfs and, when the guest has no cloud-init, writes the build user, its key and
/// passwordless sudo straight into the file system, or, for the Azure Linux agent, the DHCP lease that tells it
/// where the wireserver is. One appliance launch (~25 s under TCG) does both.
public enum OfflineProvisioner {
    /// `writingAgentLeases`: without credentials, still write the Azure Linux agent's leases when the image needs
    /// them (a `LeaseLayer` made at import); the disk is then opened for writing.
    public static func inspectAndProvision(disk: String, format: String, accelerator: Accelerator,
                                           credentials: BuildCredentials?, forceOffline: Bool,
                                           writingAgentLeases: Bool = false) async throws(KilnError) -> OfflineInspection {
        try await Blocking.run { () throws(KilnError) -> OfflineInspection in
            try run(disk: disk, format: format, accelerator: accelerator, credentials: credentials, forceOffline: forceOffline,
                    writingAgentLeases: writingAgentLeases)
        }
    }

    static func run(disk: String, format: String, accelerator: Accelerator, credentials: BuildCredentials?,
                    forceOffline: Bool, writingAgentLeases: Bool) throws(KilnError) -> OfflineInspection {
        let writable = credentials != nil || writingAgentLeases
        let handle = try GuestfsHandle()
        defer { handle.close() }
        if accelerator == .tcg { try handle.setBackendSettings(["force_tcg"]) }
        try handle.setBackend("direct")
        try handle.addDrive(disk, format: format, readOnly: !writable)
        try handle.launch()
        guard let inspection = try handle.inspectOperatingSystems().first else {
            throw KilnError(.invalidArgument, "expected an operating system on \(disk), found none (libguestfs inspection)")
        }
        try handle.mountAll(inspection, readOnly: !writable)
        let hasCloudInit: Bool
        var configuration: ProvisioningConfiguration?
        if inspection.type == "linux" {
            let found = try linuxConfiguration(handle)
            configuration = found
            hasCloudInit = found.hasCloudInit
        } else {
            hasCloudInit = try handle.exists("/Program Files/Cloudbase Solutions/Cloudbase-Init")
        }
        var injected = false
        var leases: [String] = []
        if writable, inspection.type == "linux" {
            if let credentials, forceOffline || configuration?.provisioning == .offline {
                try addLinuxUser(handle, credentials)
                injected = true
            } else if let configuration, configuration.provisioning == .waagent {
                for directory in configuration.dhcpLeaseDirectories {
                    let path = DHCPLease.path(in: directory)
                    try handle.writeFile(path, Array(DHCPLease.contents.utf8))
                    try handle.chmod(0o644, path)
                    leases.append(path)
                }
            }
        }
        try handle.finish()
        return OfflineInspection(osType: inspection.type == "windows" ? "Windows" : "Linux", distro: inspection.distro,
                                 productName: inspection.productName, hasCloudInit: hasCloudInit, injectedCredentials: injected,
                                 writtenLeases: leases, configuration: configuration)
    }

    /// cloud-init (installed, switched off, its datasource list) and the Azure Linux agent, from the image's files.
    static func linuxConfiguration(_ handle: GuestfsHandle) throws(KilnError) -> ProvisioningConfiguration {
        let inUsrBin = try handle.exists("/usr/bin/cloud-init")
        let inUsrLocalBin = try handle.exists("/usr/local/bin/cloud-init")
        var configuration = ProvisioningConfiguration(hasCloudInit: inUsrBin || inUsrLocalBin)
        if configuration.hasCloudInit {
            // Switched off by cloud-init's own file, or by masking its first unit (a link to /dev/null).
            let unit = "/etc/systemd/system/cloud-init-local.service"
            let linked = try handle.isSymlink(unit)
            let masked = try linked ? true : handle.exists(unit)
            let disabledFile = try handle.exists("/etc/cloud/cloud-init.disabled")
            let wanted = try handle.isSymlink("/etc/systemd/system/cloud-init.target.wants/cloud-init-local.service")
            configuration.cloudInitDisabled = masked || disabledFile
            configuration.cloudInitUnitEnabled = !masked && wanted
            let dropIns = try handle.exists("/etc/cloud/cloud.cfg.d") ? try handle.ls("/etc/cloud/cloud.cfg.d") : []
            var texts: [String] = []
            for file in ProvisioningConfiguration.configurationFiles(inDropInDirectory: dropIns) where try handle.exists(file) {
                texts.append(String(decoding: try handle.readFile(file), as: UTF8.self))
            }
            configuration.datasourceList = ProvisioningConfiguration.datasourceList(fromFiles: texts)
        }
        for agent in ["/usr/sbin/waagent", "/usr/bin/waagent"] where try handle.exists(agent) {
            configuration.hasWaagent = true
        }
        if configuration.hasWaagent, try handle.exists("/etc/waagent.conf") {
            configuration.waagentProvisioningAgent = ProvisioningConfiguration.waagentProvisioningAgent(
                fromConfiguration: String(decoding: try handle.readFile("/etc/waagent.conf"), as: UTF8.self))
        }
        if configuration.hasWaagent {
            for directory in DHCPLease.directories where try handle.exists(directory) {
                configuration.dhcpLeaseDirectories.append(directory)
            }
        }
        return configuration
    }

    /// Prepares a Windows image for its first boot under Kiln: reads its ImageState and, when it is generalized
    /// (the AIB case), writes an answer file that sets the Administrator password and enables WinRM over HTTPS.
    public static func prepareWindows(disk: String, format: String, accelerator: Accelerator,
                                      answerFile: String, setupScript: String) async throws(KilnError) -> WindowsPreparation {
        try await Blocking.run { () throws(KilnError) -> WindowsPreparation in
            try windows(disk: disk, format: format, accelerator: accelerator, answerFile: answerFile, setupScript: setupScript)
        }
    }

    static func windows(disk: String, format: String, accelerator: Accelerator, answerFile: String, setupScript: String) throws(KilnError) -> WindowsPreparation {
        let handle = try GuestfsHandle()
        defer { handle.close() }
        if accelerator == .tcg { try handle.setBackendSettings(["force_tcg"]) }
        try handle.setBackend("direct")
        try handle.addDrive(disk, format: format, readOnly: false)
        try handle.launch()
        guard let inspection = try handle.inspectOperatingSystems().first else {
            throw KilnError(.invalidArgument, "expected an operating system on \(disk), found none (libguestfs inspection)")
        }
        guard inspection.type == "windows" else {
            throw KilnError(.invalidArgument, "expected a Windows image, found \(inspection.productName) (\(inspection.type))")
        }
        try handle.mountAll(inspection, readOnly: false)
        let statePath = try handle.caseSensitivePath("/Windows/Setup/State/State.ini")
        var imageState = "unknown (no State.ini)"
        if try handle.exists(statePath) {
            imageState = WindowsPreparation.imageState(fromStateINI: try handle.readFile(statePath)) ?? "unknown"
        }
        let generalized = imageState == "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE"
        if generalized {
            let panther = try handle.caseSensitivePath("/Windows/Panther")
            try handle.mkdirP(panther)
            try handle.writeFile(try handle.caseSensitivePath("/Windows/Panther/unattend.xml"), Array(answerFile.utf8))
            let scripts = try handle.caseSensitivePath("/Windows/Setup/Scripts")
            try handle.mkdirP(scripts)
            try handle.writeFile(try handle.caseSensitivePath("/Windows/Setup/Scripts/kiln-winrm.ps1"), [0xEF, 0xBB, 0xBF] + Array(setupScript.utf8))
        }
        try handle.finish()
        return WindowsPreparation(productName: inspection.productName, imageState: imageState, answerFileWritten: generalized)
    }

    static func addLinuxUser(_ g: GuestfsHandle, _ credentials: BuildCredentials) throws(KilnError) {
        let user = credentials.username
        let passwd = String(decoding: try g.readFile("/etc/passwd"), as: UTF8.self)
        guard !passwd.split(separator: "\n").contains(where: { $0.hasPrefix(user + ":") }) else {
            throw KilnError(.invalidState, "the image already has a user named \(user)")
        }
        let usedIDs = Set(passwd.split(separator: "\n").compactMap { line in line.split(separator: ":", omittingEmptySubsequences: false).dropFirst(2).first.flatMap { Int($0) } })
        let group = String(decoding: try g.readFile("/etc/group"), as: UTF8.self)
        let usedGroups = Set(group.split(separator: "\n").compactMap { line in line.split(separator: ":", omittingEmptySubsequences: false).dropFirst(2).first.flatMap { Int($0) } })
        var id = 1000
        while usedIDs.contains(id) || usedGroups.contains(id) { id += 1 }
        let home = "/home/\(user)"
        func appendLine(_ path: String, _ line: String) throws(KilnError) {
            guard try g.exists(path) else { return }
            let existing = try g.readFile(path)
            let separator: [UInt8] = existing.isEmpty || existing.last == 0x0A ? [] : [0x0A]
            try g.writeFile(path, separator + Array((line + "\n").utf8), append: true)
        }
        try appendLine("/etc/passwd", "\(user):x:\(id):\(id):Kiln build user:\(home):/bin/bash")
        // "*": no password, but not locked, so key authentication works with or without PAM.
        try appendLine("/etc/shadow", "\(user):*:19000:0:99999:7:::")
        try appendLine("/etc/group", "\(user):x:\(id):")
        try appendLine("/etc/gshadow", "\(user):!::")
        try g.mkdirP(home + "/.ssh")
        try g.writeFile(home + "/.ssh/authorized_keys", Array((credentials.authorizedKey + "\n").utf8))
        try g.chmod(0o700, home + "/.ssh")
        try g.chmod(0o600, home + "/.ssh/authorized_keys")
        for path in [home, home + "/.ssh", home + "/.ssh/authorized_keys"] { try g.chown(Int32(id), Int32(id), path) }
        try g.mkdirP("/etc/sudoers.d")
        try g.writeFile("/etc/sudoers.d/90-kiln-build-user", Array("\(user) ALL=(ALL) NOPASSWD:ALL\n".utf8))
        try g.chmod(0o440, "/etc/sudoers.d/90-kiln-build-user")
        // sshd will not start without host keys; images that make them at first boot through cloud-init have none.
        let hasHostKey = try g.exists("/etc/ssh/ssh_host_ed25519_key")
        let hasKeygen = try g.exists("/usr/bin/ssh-keygen")
        if !hasHostKey && hasKeygen {
            _ = try g.command(["/usr/bin/ssh-keygen", "-A"])
        }
    }
}

/// What Kiln found and wrote in a Windows image before its first boot.
public struct WindowsPreparation: Sendable {
    public var productName: String
    /// HKLM\...\Setup\State ImageState as State.ini records it.
    public var imageState: String
    public var answerFileWritten: Bool

    /// `ImageState=…` from State.ini, which Windows writes in UTF-16LE with a byte order mark (or ANSI).
    public static func imageState(fromStateINI bytes: [UInt8]) -> String? {
        let text: String
        if bytes.starts(with: [0xFF, 0xFE]) {
            let units = stride(from: 2, to: bytes.count - 1, by: 2).map { UInt16(bytes[$0]) | UInt16(bytes[$0 + 1]) << 8 }
            text = String(decoding: units, as: UTF16.self)
        } else {
            text = String(decoding: bytes, as: UTF8.self)
        }
        for line in text.split(whereSeparator: \.isNewline) {
            let parts = line.split(separator: "=", maxSplits: 1)
            if parts.count == 2, parts[0].trimmingCharacters(in: .whitespaces).lowercased() == "imagestate" {
                return parts[1].trimmingCharacters(in: .whitespaces)
            }
        }
        return nil
    }
}
