import Foundation
import NIOHTTP1
import Testing
@testable import KilnMachine

/// How an image's provisioning is decided from its files, and what the Azure fabric answers, without a VM.
@Suite("Azure presentation (no VM)")
struct AzurePresentationTests {
    @Test func datasourceListIsReadAsDsIdentifyReadsIt() {
        // The last single-line setting wins, in cloud.cfg then cloud.cfg.d/*.cfg order; comments are stripped.
        let files = ProvisioningConfiguration.configurationFiles(inDropInDirectory: ["99_azure.cfg", "05_logging.cfg", "README", "90_dpkg.cfg"])
        #expect(files == ["/etc/cloud/cloud.cfg", "/etc/cloud/cloud.cfg.d/05_logging.cfg", "/etc/cloud/cloud.cfg.d/90_dpkg.cfg",
                          "/etc/cloud/cloud.cfg.d/99_azure.cfg"])
        let ubuntu = ["# from dpkg\ndatasource_list: [ NoCloud, ConfigDrive, Azure, None ]\n", "datasource_list: [ Azure ] # Azure image\n"]
        #expect(ProvisioningConfiguration.datasourceList(fromFiles: ubuntu) == ["Azure"])
        #expect(ProvisioningConfiguration.datasourceList(fromFiles: ["datasource_list: ['NoCloud', \"Azure\"]"]) == ["NoCloud", "Azure"])
        #expect(ProvisioningConfiguration.datasourceList(fromFiles: ["#datasource_list: [ Azure ]\nlocale: C.UTF-8"]) == nil)
    }

    @Test func provisioningFollowsTheImagesAgents() {
        #expect(ProvisioningConfiguration(hasCloudInit: true).provisioning == .noCloud, "cloud-init's default list has NoCloud")
        #expect(ProvisioningConfiguration(hasCloudInit: true, datasourceList: ["NoCloud", "Azure", "None"]).provisioning == .noCloud)
        #expect(ProvisioningConfiguration(hasCloudInit: true, datasourceList: ["Azure"]).provisioning == .azure)
        #expect(ProvisioningConfiguration(hasCloudInit: true, datasourceList: ["Ec2", "None"]).provisioning == .offline)
        #expect(ProvisioningConfiguration(hasCloudInit: true, cloudInitDisabled: true, datasourceList: ["Azure"]).provisioning == .offline)
        let agentOnly = ProvisioningConfiguration(hasCloudInit: false, hasWaagent: true, waagentProvisioningAgent: "waagent")
        #expect(agentOnly.provisioning == .offline)
        #expect(agentOnly.notice?.contains("DHCP option 245") == true, "why the agent's own way is not taken")
        #expect(ProvisioningConfiguration(hasCloudInit: true, datasourceList: ["Azure"], hasWaagent: true).notice == nil)
        // With a lease directory the agent reads, the agent provisions the build user itself.
        let agentWithLeases = ProvisioningConfiguration(hasCloudInit: false, hasWaagent: true, waagentProvisioningAgent: "waagent",
                                                        dhcpLeaseDirectories: ["/var/lib/dhcp"])
        #expect(agentWithLeases.provisioning == .waagent)
        #expect(agentWithLeases.notice == nil)
        #expect(ProvisioningConfiguration(hasCloudInit: true, cloudInitDisabled: true, hasWaagent: true, dhcpLeaseDirectories: ["/var/lib/dhclient"]).provisioning == .waagent,
                "cloud-init switched off, Provisioning.Agent unset (auto): the agent provisions")
        let refusing = ProvisioningConfiguration(hasCloudInit: true, cloudInitDisabled: true, cloudInitUnitEnabled: true, hasWaagent: true,
                                                 dhcpLeaseDirectories: ["/var/lib/dhcp"])
        #expect(refusing.provisioning == .offline, "cloud-init.disabled but its unit enabled: the agent refuses, as on Azure")
        #expect(refusing.notice?.contains("systemctl mask") == true, "\(refusing.notice ?? "")")
        #expect(ProvisioningConfiguration(hasCloudInit: false, hasWaagent: true, waagentProvisioningAgent: "cloud-init", dhcpLeaseDirectories: ["/var/lib/dhcp"]).provisioning == .offline,
                "an agent told to leave provisioning to cloud-init, and no cloud-init")
        #expect(ProvisioningConfiguration(hasCloudInit: true, datasourceList: ["Azure"], hasWaagent: true, waagentProvisioningAgent: "waagent",
                                          dhcpLeaseDirectories: ["/var/lib/dhcp"]).provisioning == .azure, "cloud-init at work provisions")
        #expect(DHCPLease.path(in: "/var/lib/dhcp") == "/var/lib/dhcp/dhclient.azure-wireserver.leases", "matches Debian's and Ubuntu's dhclient.*.leases")
        #expect(DHCPLease.path(in: "/var/lib/NetworkManager") == "/var/lib/NetworkManager/dhclient-azure-wireserver.lease", "matches RHEL's dhclient-*.lease")
        #expect(ProvisioningConfiguration.waagentProvisioningAgent(fromConfiguration: "# Provisioning.Agent=auto\nProvisioning.Agent=cloud-init\n") == "cloud-init")
        let described = ProvisioningConfiguration(hasCloudInit: true, datasourceList: ["Azure"], hasWaagent: true, waagentProvisioningAgent: "auto").description
        #expect(described == "cloud-init, datasource_list [ Azure ]; waagent (Provisioning.Agent=auto)")
    }

    /// The lease is parsed here as the agent's `get_endpoint_from_leases_path` parses it: per `lease` block, the
    /// last `option unknown-245` line's four hex bytes, valid when `expire` says never (or a later date).
    @Test func dhcpLeaseCarriesTheWireserverAsTheAgentParsesIt() {
        var endpoint: String?
        var candidate: String?
        var expired = true
        for line in DHCPLease.contents.split(separator: "\n").map(String.init) {
            if line.hasPrefix("lease") { candidate = nil; expired = true }
            else if line.contains("expire") { expired = !line.contains("never") }
            else if line.contains("}") { if !expired, let candidate { endpoint = candidate } }
            else if let range = line.range(of: #"^\s*option\s+unknown-245\s+([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+);"#, options: .regularExpression) {
                candidate = line[range].split(separator: " ").last.map { $0.dropLast().split(separator: ":").map { String(Int($0, radix: 16) ?? -1) }.joined(separator: ".") }
            }
        }
        #expect(endpoint == "168.63.129.16")
    }

    static func fabric() -> AzureFabric {
        AzureFabric(socketPath: "/nonexistent", metadata: InstanceMetadata(location: "northeurope", vmSize: "Standard_D2s_v3",
                                                                       tags: ["team": "images", "a": "b"], publisher: "Canonical"),
                    vmName: "kiln-1234", vmID: "4F1E8A2C-0000-4000-8000-000000000001", username: "packer", publicKey: "ssh-ed25519 AAAA kiln",
                    log: { _ in })
    }

    static func metadataHeaders() -> HTTPHeaders { HTTPHeaders([("Metadata", "true")]) }

    @Test func instanceMetadataAnswersAsAzuresDoes() throws {
        let fabric = Self.fabric()
        let all = fabric.respond(method: "GET", uri: "/metadata/instance?api-version=2021-02-01", headers: Self.metadataHeaders(), body: [])
        #expect(all.status == 200)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(all.body)) as? [String: Any])
        let compute = try #require(json["compute"] as? [String: Any])
        #expect(compute["location"] as? String == "northeurope")
        #expect(compute["vmId"] as? String == "4f1e8a2c-0000-4000-8000-000000000001")
        #expect(compute["tags"] as? String == "a:b;team:images")
        #expect((compute["publicKeys"] as? [[String: String]])?.first?["keyData"] == "ssh-ed25519 AAAA kiln", "cloud-init 22.4 takes the key from here")
        #expect(json["network"] == nil, "no MAC-matched network config for cloud-init to apply")
        #expect(compute["extended"] == nil)

        let text = fabric.respond(method: "GET", uri: "/metadata/instance/compute/vmSize?api-version=2021-02-01&format=text", headers: Self.metadataHeaders(), body: [])
        #expect(String(decoding: text.body, as: UTF8.self) == "Standard_D2s_v3")
        #expect(fabric.respond(method: "GET", uri: "/metadata/instance?api-version=2021-02-01", headers: HTTPHeaders(), body: []).status == 400,
                "the Metadata header is required")
        #expect(fabric.respond(method: "GET", uri: "/metadata/instance", headers: Self.metadataHeaders(), body: []).status == 400, "api-version is required")
        #expect(fabric.respond(method: "GET", uri: "/metadata/instance/compute/nothing?api-version=2021-02-01", headers: Self.metadataHeaders(), body: []).status == 404)
    }

    @Test func wireserverServesTheGoalStateAndTakesHealthReports() {
        let fabric = Self.fabric()
        let versions = fabric.respond(method: "GET", uri: "/?comp=versions", headers: HTTPHeaders(), body: [])
        #expect(String(decoding: versions.body, as: UTF8.self).contains("<Preferred><Version>2012-11-30</Version></Preferred>"))
        let goal = String(decoding: fabric.respond(method: "GET", uri: "/machine/?comp=goalstate", headers: HTTPHeaders(), body: []).body, as: UTF8.self)
        for element in ["<Incarnation>1</Incarnation>", "<ContainerId>", "<InstanceId>", "<HostingEnvironmentConfig>", "<SharedConfig>", "<ConfigName>"] {
            #expect(goal.contains(element), "\(element)")
        }
        #expect(!goal.contains("Certificates"), "cloud-init's report-ready would need to decrypt them")
        let hosting = goal.firstMatch(of: /<HostingEnvironmentConfig>http:\/\/168\.63\.129\.16:80(\/[^<]*)<\/HostingEnvironmentConfig>/)?.1
        let uri = String(hosting ?? "").replacingOccurrences(of: "&amp;", with: "&")
        #expect(String(decoding: fabric.respond(method: "GET", uri: uri, headers: HTTPHeaders(), body: []).body, as: UTF8.self).contains("<HostingEnvironmentConfig"))

        let notReady = Array("<Health><State>NotReady</State><Details><SubStatus>ProvisioningFailed</SubStatus><Description>no user</Description></Details></Health>".utf8)
        #expect(fabric.respond(method: "POST", uri: "/machine?comp=health", headers: HTTPHeaders(), body: notReady).status == 200)
        #expect(fabric.respond(method: "POST", uri: "/machine?comp=health", headers: HTTPHeaders(), body: Array("<State>Ready</State>".utf8)).status == 200)
        #expect(fabric.healthReports == [.init(state: "NotReady", description: "no user", subStatus: "ProvisioningFailed"), .init(state: "Ready", description: nil)])
        #expect(fabric.respond(method: "GET", uri: "/vmSettings", headers: HTTPHeaders(), body: []).status == 404, "Fast Track: not supported")
    }

    @Test func ovfEnvironmentCarriesTheUserAndKey() {
        let xml = OVFEnvironment.xml(username: "packer", hostname: "kiln-1", publicKey: "ssh-ed25519 AAAA <kiln>")
        #expect(xml.contains("<ns1:UserName>packer</ns1:UserName>"))
        #expect(xml.contains("<ns1:Path>/home/packer/.ssh/authorized_keys</ns1:Path>"))
        #expect(xml.contains("<ns1:Value>ssh-ed25519 AAAA &lt;kiln&gt;</ns1:Value>"))
        #expect(xml.contains("<ns1:PreprovisionedVm>false</ns1:PreprovisionedVm>"))
        #expect(xml.contains("<ns1:ProvisionGuestAgent>true</ns1:ProvisionGuestAgent>"))
    }

    @Test func theGuestNetworkHoldsAzuresAddresses() {
        let fabric = Self.fabric()
        #expect(fabric.guestForwards == [
            "guestfwd=tcp:169.254.169.254:80-cmd:socat STDIO UNIX-CONNECT:/nonexistent",
            "guestfwd=tcp:168.63.129.16:80-cmd:socat STDIO UNIX-CONNECT:/nonexistent",
            "guestfwd=tcp:168.63.129.16:32526-cmd:socat STDIO UNIX-CONNECT:/nonexistent",
        ])
        var spec = DomainSpec(name: "kiln-1", accelerator: .tcg, vCPUs: 1, memoryMiB: 512, firmware: .bios, nvramPath: nil, disks: [],
                              serialLogPath: "/tmp/c", portForwards: [DomainSpec.PortForward(hostPort: 2222, guestPort: 22)])
        spec.chassisAssetTag = BuildMachine.azureChassisAssetTag
        spec.userNetworkOptions = BuildMachine.azureNetworkOptions + ["guestfwd=tcp:168.63.129.16:80-cmd:socat STDIO UNIX-CONNECT:/a,,b"]
        let xml = spec.xml
        #expect(xml.contains("<smbios mode='sysinfo'/>"))
        #expect(xml.contains("<entry name='asset'>7783-7084-3265-9085-8269-3286-77</entry>"))
        #expect(xml.contains("<qemu:arg value='user,id=kilnnet0,net=168.0.0.0/7,host=168.0.0.2,dns=168.0.0.3,dhcpstart=168.0.0.15,guestfwd=tcp:168.63.129.16:80-cmd:socat STDIO UNIX-CONNECT:/a,,b,hostfwd=tcp:127.0.0.1:2222-:22'/>"))
    }
}
