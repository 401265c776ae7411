import Foundation

/// How a Linux image gets its build user, decided once from what the image's files say (at import, or at the
/// first boot's inspection) and shown.
public enum LinuxProvisioning: String, Sendable, Codable, CaseIterable {
    /// cloud-init reads a NoCloud seed (its datasource list has NoCloud, or is cloud-init's default).
    case noCloud = "cloud-init-nocloud"
    /// cloud-init reads only Azure's datasource (Ubuntu's and RHEL's Azure images): the build VM is presented as
    /// Azure presents it (asset tag, ovf-env.xml, wireserver, instance metadata).
    case azure = "cloud-init-azure"
    /// The Azure Linux agent provisions (no cloud-init, or cloud-init switched off; `Provisioning.Agent` auto or
    /// waagent): presented as Azure as for `.azure`, and the wireserver's address, which QEMU's DHCP server cannot
    /// send, written offline as the DHCP lease the agent looks for (`DHCPLease`).
    case waagent = "waagent-azure"
    /// No cloud-init, or none that reads NoCloud or Azure, and no agent that Kiln can serve: the build user is
    /// written offline.
    case offline

    public var summary: String {
        switch self {
        case .noCloud: "cloud-init, NoCloud seed"
        case .azure: "cloud-init, Azure datasource (presented as Azure: ovf-env.xml, wireserver, instance metadata)"
        case .waagent: "Azure Linux agent (presented as Azure: ovf-env.xml, wireserver, instance metadata; the wireserver's address as a DHCP lease)"
        case .offline: "written offline (libguestfs)"
        }
    }
}

/// What an image's cloud-init and Azure Linux agent configuration say, read from its files.
public struct ProvisioningConfiguration: Sendable, Equatable {
    public var hasCloudInit: Bool
    /// cloud-init is installed but switched off (`/etc/cloud/cloud-init.disabled`, or its units masked).
    public var cloudInitDisabled: Bool
    /// `systemctl is-enabled cloud-init-local.service` would say enabled (its link in cloud-init.target.wants,
    /// not masked), which is what the Azure Linux agent checks before it provisions.
    public var cloudInitUnitEnabled: Bool
    /// The effective `datasource_list`; nil when no file sets it (cloud-init's default list, which has both).
    public var datasourceList: [String]?
    public var hasWaagent: Bool
    /// `Provisioning.Agent` in /etc/waagent.conf (`auto` when unset).
    public var waagentProvisioningAgent: String?
    /// Which of the directories where waagent looks for a cached DHCP lease (`DHCPLease.directories`) the image has.
    public var dhcpLeaseDirectories: [String]

    public init(hasCloudInit: Bool, cloudInitDisabled: Bool = false, cloudInitUnitEnabled: Bool = false, datasourceList: [String]? = nil,
                hasWaagent: Bool = false, waagentProvisioningAgent: String? = nil, dhcpLeaseDirectories: [String] = []) {
        self.hasCloudInit = hasCloudInit
        self.cloudInitDisabled = cloudInitDisabled
        self.cloudInitUnitEnabled = cloudInitUnitEnabled
        self.datasourceList = datasourceList
        self.hasWaagent = hasWaagent
        self.waagentProvisioningAgent = waagentProvisioningAgent
        self.dhcpLeaseDirectories = dhcpLeaseDirectories
    }

    public var provisioning: LinuxProvisioning {
        if hasCloudInit, !cloudInitDisabled {
            guard let list = datasourceList?.map({ $0.lowercased() }) else { return .noCloud }
            if list.contains("nocloud") { return .noCloud }
            if list.contains("azure") { return .azure }
        }
        if agentProvisions, !agentRefuses, !dhcpLeaseDirectories.isEmpty { return .waagent }
        return .offline
    }

    /// The agent refuses to provision while cloud-init's first unit is enabled (`pa/provision/default.py`: "cloud-init
    /// appears to be installed and enabled, this is not expected, cannot continue"), on Azure as here;
    /// /etc/cloud/cloud-init.disabled does not change what `systemctl is-enabled` says.
    var agentRefuses: Bool { hasCloudInit && cloudInitUnitEnabled }

    /// The Azure Linux agent would provision this image on Azure: no cloud-init at work, and `Provisioning.Agent`
    /// auto (waagent when cloud-init is absent) or waagent.
    var agentProvisions: Bool {
        hasWaagent && (!hasCloudInit || cloudInitDisabled)
            && ["auto", "waagent"].contains((waagentProvisioningAgent ?? "auto").lowercased())
    }

    /// Why an image that the Azure Linux agent provisions on Azure is given its build user offline here.
    public var notice: String? {
        guard provisioning == .offline, agentProvisions else { return nil }
        if agentRefuses {
            return "the Azure Linux agent would not provision this image, on Azure either: it refuses while cloud-init-local.service is enabled (\"cloud-init appears to be installed and enabled\"), and /etc/cloud/cloud-init.disabled does not change that; Kiln writes the build user offline. Mask cloud-init's units (systemctl mask cloud-init-local.service cloud-init.service cloud-config.service cloud-final.service) or remove cloud-init for the agent to provision"
        }
        return "the Azure Linux agent provisions this image on Azure, but under QEMU it can find the wireserver only through DHCP option 245 in a cached lease (QEMU's DHCP server cannot send the option), and the image has none of the lease directories the agent reads (\(DHCPLease.directories.joined(separator: ", "))), so Kiln writes the build user offline"
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

/// The cached DHCP lease through which the Azure Linux agent learns the wireserver's address.
///
/// On Azure the agent finds the wireserver (168.63.129.16) through a route to it, or through DHCP option 245 in
/// its own DHCP request or in a lease its distribution's DHCP client cached (`azurelinuxagent/common/dhcp.py`:
/// `wireserver_route_exists`, `dhcp_cache_exists`, `send_dhcp_req`). QEMU's user-mode DHCP server sends neither the
/// route (option 121) nor option 245, so without help the agent retries for an hour before it provisions anything.
/// Kiln writes, offline, one lease that carries option 245 into each directory the agent's OS classes read
/// (`get_dhcp_lease_endpoint`: Debian and Ubuntu `/var/lib/dhcp/dhclient.*.leases`, RHEL 7 and later
/// `/var/lib/dhclient/dhclient-*.lease`, NetworkManager `/var/lib/NetworkManager/dhclient-*.lease`), under a name no DHCP client
/// uses, and removes them in the final cleanup (the agent's own deprovisioning deletes those directories too).
public enum DHCPLease {
    public static let directories = ["/var/lib/dhcp", "/var/lib/dhclient", "/var/lib/NetworkManager"]

    /// The lease file Kiln writes in `directory`, named to match that directory's pattern.
    public static func path(in directory: String) -> String {
        switch directory {
        case "/var/lib/dhcp": directory + "/dhclient.azure-wireserver.leases"
        default: directory + "/dhclient-azure-wireserver.lease"
        }
    }

    /// Every path Kiln may have written, for the final cleanup.
    public static var allPaths: [String] { directories.map(path(in:)) }

    /// A dhclient lease that never expires with option 245 = the wireserver, as the agent parses it
    /// (`get_endpoint_from_leases_path`: `lease {`, `option unknown-245 a8:3f:81:10;`, `expire never;`, `}`).
    public static let contents = """
    lease {
      interface "eth0";
      fixed-address 168.0.0.15;
      option unknown-245 a8:3f:81:10;
      expire never;
    }

    """
}
