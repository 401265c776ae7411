import Foundation

/// How a Linux image gets its build user, decided once from what the image's files say (at import, or at the
/// first boot's inspection) and shown.
public enum LinuxProvisioning: String, Sendable, Codable, CaseIterable {
    /// cloud-init reads a NoCloud seed (its datasource list has NoCloud, or is cloud-init's default).
    case noCloud = "cloud-init-nocloud"
    /// cloud-init reads only Azure's datasource (Ubuntu's and RHEL's Azure images): the build VM is presented as
    /// Azure presents it (asset tag, ovf-env.xml, wireserver, instance metadata).
    case azure = "cloud-init-azure"
    /// No cloud-init, or none that reads NoCloud or Azure: the build user is written offline.
    case offline

    public var summary: String {
        switch self {
        case .noCloud: "cloud-init, NoCloud seed"
        case .azure: "cloud-init, Azure datasource (presented as Azure: ovf-env.xml, wireserver, instance metadata)"
        case .offline: "written offline (libguestfs)"
        }
    }
}

/// What an image's cloud-init and Azure Linux agent configuration say, read from its files.
public struct ProvisioningConfiguration: Sendable, Equatable {
    public var hasCloudInit: Bool
    /// cloud-init is installed but switched off (`/etc/cloud/cloud-init.disabled`).
    public var cloudInitDisabled: Bool
    /// The effective `datasource_list`; nil when no file sets it (cloud-init's default list, which has both).
    public var datasourceList: [String]?
    public var hasWaagent: Bool
    /// `Provisioning.Agent` in /etc/waagent.conf (`auto` when unset).
    public var waagentProvisioningAgent: String?

    public init(hasCloudInit: Bool, cloudInitDisabled: Bool = false, datasourceList: [String]? = nil, hasWaagent: Bool = false,
                waagentProvisioningAgent: String? = nil) {
        self.hasCloudInit = hasCloudInit
        self.cloudInitDisabled = cloudInitDisabled
        self.datasourceList = datasourceList
        self.hasWaagent = hasWaagent
        self.waagentProvisioningAgent = waagentProvisioningAgent
    }

    public var provisioning: LinuxProvisioning {
        guard hasCloudInit, !cloudInitDisabled else { return .offline }
        guard let list = datasourceList?.map({ $0.lowercased() }) else { return .noCloud }
        if list.contains("nocloud") { return .noCloud }
        if list.contains("azure") { return .azure }
        return .offline
    }

    /// Why an image that the Azure Linux agent provisions on Azure is given its build user offline here.
    public var notice: String? {
        guard provisioning == .offline, hasWaagent, !hasCloudInit || cloudInitDisabled,
              ["auto", "waagent"].contains((waagentProvisioningAgent ?? "auto").lowercased()) else { return nil }
        return "the Azure Linux agent provisions this image on Azure, but under QEMU it cannot find the wireserver (it needs DHCP option 245, which QEMU's DHCP server cannot send), so Kiln writes the build user offline"
    }

    /// A line for the user: what was found and which way the build user is given.
    public var description: String {
        var parts: [String] = []
        if hasCloudInit {
            parts.append(cloudInitDisabled ? "cloud-init (disabled)"
                         : "cloud-init, datasource_list " + (datasourceList.map { "[ " + $0.joined(separator: ", ") + " ]" } ?? "default"))
        } else {
            parts.append("no cloud-init")
        }
        if hasWaagent { parts.append("waagent (Provisioning.Agent=\(waagentProvisioningAgent ?? "auto"))") }
        return parts.joined(separator: "; ")
    }

    /// cloud-init's configuration files in the order cloud-init reads them: cloud.cfg, then cloud.cfg.d/*.cfg
    /// sorted by name.
    public static func configurationFiles(inDropInDirectory names: [String]) -> [String] {
        ["/etc/cloud/cloud.cfg"] + names.filter { $0.hasSuffix(".cfg") }.sorted().map { "/etc/cloud/cloud.cfg.d/" + $0 }
    }

    /// The datasource list as cloud-init's ds-identify reads it (`check_config`): the last single-line
    /// `datasource_list: [ … ]` across the files, in order; comments stripped. nil when none sets it.
    public static func datasourceList(fromFiles texts: [String]) -> [String]? {
        var found: [String]?
        for text in texts {
            for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
                var line = String(rawLine)
                if let hash = line.firstIndex(of: "#") { line = String(line[..<hash]) }
                line = line.trimmingCharacters(in: .whitespaces)
                guard line.hasPrefix("datasource_list:") else { continue }
                let value = line.dropFirst("datasource_list:".count).trimmingCharacters(in: .whitespaces)
                guard value.hasPrefix("["), value.hasSuffix("]") else { continue }
                found = value.dropFirst().dropLast().split(separator: ",")
                    .map { $0.trimmingCharacters(in: CharacterSet.whitespaces.union(CharacterSet(charactersIn: "'\""))) }
                    .filter { !$0.isEmpty }
            }
        }
        return found
    }

    /// `Provisioning.Agent=…` from waagent.conf.
    public static func waagentProvisioningAgent(fromConfiguration text: String) -> String? {
        var agent: String?
        for rawLine in text.split(separator: "\n") {
            let line = rawLine.trimmingCharacters(in: .whitespaces)
            guard !line.hasPrefix("#"), line.hasPrefix("Provisioning.Agent") else { continue }
            let parts = line.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, parts[0].trimmingCharacters(in: .whitespaces) == "Provisioning.Agent" else { continue }
            agent = parts[1].trimmingCharacters(in: .whitespaces)
        }
        return agent
    }
}
