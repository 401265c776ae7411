import Foundation
import KilnGuestfs
import KilnSupport
import KilnTestSupport
import Testing

/// Images users bring, set up as Azure's are: imported as the VHDs Azure exports, built end to end with a step that
/// reads the instance metadata, a File step and a reboot, then opened to check the steps' work and that nothing of
/// Kiln's is left. A suite of its own, so that it runs beside the other VM suites (`VMSlot`).
@Suite("Images users bring (real VMs)", .serialized, .vmSlot, .enabled(if: VMTestEnvironment.enabled))
struct BroughtImageTests {
    typealias Workspace = BuildTests.Workspace

    struct BroughtImage {
        var recipe: String
        var urn: String
        /// The file handed to `kiln image import`: a VHD of qemu-img's vpc subformat `fixed` (as Azure exports) or
        /// `dynamic`, or `raw`.
        var fileFormat: String
        var provisioning: String
        /// A deprovisioning script the template writes to /tmp/DeprovisioningScript.sh in place of AIB's default
        /// (`waagent -deprovision+user`), for an image without the Azure Linux agent.
        var deprovisioningScript: [String]? = nil
    }

    /// Imports `image`, builds the shared template on it and returns the build's events and the output VHD, opened.
    /// `isolate`: build with --isolate-network; either way a step tries a service on the host's loopback through the
    /// guest's host address (reached without isolation, as Packer's 10.0.2.2 is; not with it).
    func buildBroughtImage(_ image: BroughtImage, work: Workspace, isolate: Bool = false) async throws -> (events: [[String: Any]], handle: GuestfsHandle, vhd: String) {
        let served = work.files + "/served"
        try FileManager.default.createDirectory(atPath: served, withIntermediateDirectories: true)
        try "on the host\n".write(toFile: served + "/loopback.txt", atomically: true, encoding: .utf8)
        let hostService = try LoopbackHTTPServer(directory: served)
        defer { hostService.stop() }
        let built = try await Subprocess.run(VMTestEnvironment.repositoryRoot.path + "/scripts/build-image", ["--print-path", image.recipe])
        let qcow2 = try #require(built.succeeded ? built.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) : nil,
                                 "scripts/build-image \(image.recipe) first (scripts/test does)")
        let raw = image.fileFormat == "raw"
        let vhd = work.files + "/\(image.recipe)" + (raw ? ".raw" : ".vhd")
        let converted = try await Subprocess.run("qemu-img", ["convert", "-f", "qcow2"] + (raw ? ["-O", "raw"]
            : ["-O", "vpc", "-o", "subformat=\(image.fileFormat)\(image.fileFormat == "fixed" ? ",force_size" : "")"]) + [qcow2, vhd])
        #expect(converted.succeeded, "\(converted.stderrText)")
        let sourceBefore = try FileManager.default.attributesOfItem(atPath: vhd)

        let imported = try await work.kiln(["image", "import", vhd, "--urn", image.urn])
        #expect(imported.status == 0, "\(imported.stderr)")
        #expect(imported.stdout.contains(raw ? ": raw, " : ": vpc (VHD), "), "the format is decided at import and shown: \(imported.stdout)")
        #expect(imported.stdout.contains("provisioning \(image.provisioning)"), "\(imported.stdout)")

        let parts = image.urn.split(separator: ":")
        var deprovisioning = ""
        if let script = image.deprovisioningScript {
            let commands = script.enumerated().map { "echo '\($0.element)' | sudo tee \($0.offset == 0 ? "" : "-a ")/tmp/DeprovisioningScript.sh" }
            let lines = try String(decoding: JSONSerialization.data(withJSONObject: commands), as: UTF8.self)
            deprovisioning = #"\#n{"type": "Shell", "name": "deprovisioning-script", "inline": \#(lines)},"#
        }
        let payload = try work.write("payload.txt", "payload for \(image.recipe)\n")
        let template = try work.write("\(image.recipe).json", """
        {
          "type": "Microsoft.VirtualMachineImages/imageTemplates",
          "apiVersion": "2022-07-01",
          "location": "northeurope",
          "tags": {"team": "images", "stage": "lab"},
          "identity": {"type": "UserAssigned", "userAssignedIdentities": {"/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/aib": {}}},
          "properties": {
            "buildTimeoutInMinutes": 60,
            "vmProfile": {"vmSize": "Standard_D2s_v3"},
            "source": {"type": "PlatformImage", "publisher": "\(parts[0])", "offer": "\(parts[1])", "sku": "\(parts[2])", "version": "\(parts[3])"},
            "customize": [
              {"type": "Shell", "name": "metadata", "inline": [
                "sudo mkdir -p /opt/kiln",
                "curl -sf -H Metadata:true 'http://169.254.169.254/metadata/instance/compute/location?api-version=2021-02-01&format=text' | sudo tee /opt/kiln/location",
                "curl -sf -H Metadata:true 'http://169.254.169.254/metadata/instance?api-version=2021-02-01' | sudo tee /opt/kiln/instance.json",
                "cat /proc/sys/kernel/random/boot_id | sudo tee /opt/kiln/boot-before",
                "(sudo ls /var/lib/waagent/provisioned 2>/dev/null || true) | sudo tee /opt/kiln/waagent-provisioned",
                "if curl -sf --max-time 10 -o /dev/null http://168.0.0.2:\(hostService.port)/loopback.txt; then echo 'host loopback: reached'; else echo 'host loopback: unreachable'; fi"
              ]},
              {"type": "File", "name": "payload", "sourceUri": "file://\(payload)", "destination": "/tmp/payload.txt"},
              {"type": "Shell", "name": "keep-payload", "inline": ["sudo mv /tmp/payload.txt /opt/kiln/payload.txt"]},
              {"type": "Shell", "name": "reboot", "inline": ["sudo reboot"]},\(deprovisioning)
              {"type": "Shell", "name": "after-reboot", "inline": ["cat /proc/sys/kernel/random/boot_id | sudo tee /opt/kiln/boot-after"]}
            ],
            "distribute": [{"type": "VHD", "runOutputName": "broughtVhd"}]
          }
        }
        """)
        let result = try await work.build(template, isolate ? ["--isolate-network"] : [])
        let events = work.events(result)
        let final = events.last { $0["event"] as? String == "result" }
        #expect(final?["runState"] as? String == "Succeeded", "\(final ?? [:])\nstderr:\n\(result.stderr.suffix(3000))")
        let loopback = events.first { $0["event"] as? String == "output" && ($0["line"] as? String)?.hasPrefix("host loopback:") == true }?["line"] as? String
        #expect(loopback == (isolate ? "host loopback: unreachable" : "host loopback: reached"), "\(loopback ?? "no line")")
        work.expectNothingLeftBehind(final)
        // The imported file is never written.
        let sourceAfter = try FileManager.default.attributesOfItem(atPath: vhd)
        #expect(sourceAfter[.modificationDate] as? Date == sourceBefore[.modificationDate] as? Date)
        #expect(sourceAfter[.size] as? NSNumber == sourceBefore[.size] as? NSNumber)

        let runID = try #require(final?["runID"] as? String)
        let output = work.state.runsPath + "/\(runID)/broughtVhd.vhd"
        let handle = try await VMTestEnvironment.openVHD(output)
        func read(_ path: String) throws -> String { String(decoding: try handle.readFile(path), as: UTF8.self) }
        // The metadata service answered as AIB's build VM would.
        #expect(try read("/opt/kiln/location") == "northeurope")
        let instance = try JSONSerialization.jsonObject(with: Data(try handle.readFile("/opt/kiln/instance.json"))) as? [String: Any]
        let compute = instance?["compute"] as? [String: Any]
        #expect(compute?["vmSize"] as? String == "Standard_D2s_v3")
        #expect(compute?["osType"] as? String == "Linux")
        #expect(compute?["tags"] as? String == "stage:lab;team:images")
        #expect(compute?["offer"] as? String == String(parts[1]))
        #expect(try read("/opt/kiln/payload.txt") == "payload for \(image.recipe)\n")
        #expect(try read("/opt/kiln/boot-before") != (try read("/opt/kiln/boot-after")))
        // Nothing of Kiln's: no build user, no sudoers entry, no provisioning file, no script.
        let accounts = try read("/etc/passwd").split(separator: "\n").map { $0.prefix { $0 != ":" } }
        #expect(!accounts.contains("packer"))
        #expect(try !handle.exists("/home/packer"))
        #expect(try !handle.exists("/etc/sudoers.d/90-cloud-init-users"))
        #expect(try !handle.exists("/etc/sudoers.d/90-kiln-build-user"))
        #expect(try !handle.exists("/var/lib/waagent/ovf-env.xml"))
        #expect(try !handle.exists("/var/lib/cloud/seed/nocloud"))
        for lease in ["/var/lib/dhcp/dhclient.azure-wireserver.leases", "/var/lib/dhclient/dhclient-azure-wireserver.lease",
                      "/var/lib/NetworkManager/dhclient-azure-wireserver.lease"] {
            #expect(try !handle.exists(lease), "\(lease)")
        }
        let leftovers = try handle.ls("/tmp").filter { $0.hasPrefix("script_") || $0 == "DeprovisioningScript.sh" }
        #expect(leftovers.isEmpty, "\(leftovers)")
        if image.deprovisioningScript == nil {
            #expect(try read("/etc/hostname").hasPrefix("localhost"), "waagent -deprovision+user ran (it resets the host name), although the reboot emptied /tmp")
        }
        return (events, handle, output)
    }

    @Test("""
    an image whose cloud-init reads only the Azure datasource, imported as a fixed VHD, is provisioned through \
    ovf-env.xml, the wireserver and the instance metadata service; a step reads the metadata, a File lands, a reboot \
    is survived, and the image keeps nothing of Kiln's; built with --isolate-network (the wireserver and IMDS still answer, the host's loopback does not); kiln doctor passes every check
    """)
    func azureOnlyCloudInitImage() async throws {
        // kiln doctor's real checks, libguestfs's appliance launch included, pass on a machine the test command set up.
        let doctorState = VMTestEnvironment.makeStateDirectory()
        defer { try? FileManager.default.removeItem(atPath: doctorState.path) }
        let doctor = try await KilnExecutable.run(["doctor", "--state-dir", doctorState.path])
        #expect(doctor.status == 0, "\(doctor.stdout)")
        #expect(doctor.stdout.contains("libguestfs appliance: launched and shut down"), "\(doctor.stdout)")

        let work = try Workspace()
        defer { try? FileManager.default.removeItem(atPath: work.state.path) }
        let (events, handle, _) = try await buildBroughtImage(BroughtImage(recipe: "debian-12-azure", urn: "Contoso:azure-debian:12:1.0.0",
                                                                           fileFormat: "fixed", provisioning: "cloud-init-azure"), work: work,
                                                             isolate: true)
        defer { handle.close() }
        let messages = events.compactMap { $0["message"] as? String }
        #expect(messages.contains { $0.contains("presented as Azure") }, "\(messages)")
        #expect(messages.contains { $0.contains("the guest reported Ready to the wireserver") }, "cloud-init's Azure datasource reported ready: \(messages)")
        #expect(String(decoding: try handle.readFile("/etc/cloud/cloud.cfg.d/99_azure_datasource.cfg"), as: UTF8.self).contains("datasource_list: [ Azure ]"),
                "the image's own configuration is untouched")
    }

    @Test("""
    an image provisioned by the Azure Linux agent alone (cloud-init off), imported as a dynamic VHD, is provisioned \
    by the agent itself from ovf-env.xml (the wireserver's address given as a cached DHCP lease; the agent \
    regenerates the SSH host keys meanwhile), reports Ready, and builds end to end with the metadata service, a \
    File and a reboot, keeping nothing of Kiln's
    """)
    func waagentOnlyImage() async throws {
        let work = try Workspace()
        defer { try? FileManager.default.removeItem(atPath: work.state.path) }
        let (events, handle, _) = try await buildBroughtImage(BroughtImage(recipe: "debian-12-waagent", urn: "Contoso:waagent-debian:12:1.0.0",
                                                                           fileFormat: "dynamic", provisioning: "waagent-azure"), work: work)
        defer { handle.close() }
        let messages = events.compactMap { $0["message"] as? String }
        #expect(messages.contains { $0.contains("for the image's Azure Linux agent") && $0.contains("/var/lib/dhcp/dhclient.azure-wireserver.leases") }, "\(messages)")
        #expect(messages.contains { $0.contains("the guest reported Ready to the wireserver") }, "the agent reported ready: \(messages)")
        #expect(!messages.contains { $0.contains("written offline") }, "\(messages)")
        // The import wrote the leases once, into a layer the build's overlay sits on: no libguestfs launch before the boot.
        #expect(messages.contains { $0.contains("through its lease layer") }, "\(messages)")
        #expect(!messages.contains { $0.contains("inspecting the image with libguestfs") }, "\(messages)")
        let importedDirectory = work.state.imagesPath + "/imported"
        func layers() -> [String] {
            ((try? FileManager.default.contentsOfDirectory(atPath: importedDirectory)) ?? []).filter { $0.hasSuffix(".lease-layer.qcow2") }
        }
        #expect(layers().count == 1, "\(layers())")
        let removed = try await work.kiln(["image", "remove", "Contoso:waagent-debian:12:1.0.0"])
        #expect(removed.status == 0, "\(removed.stderr)")
        #expect(layers().isEmpty, "kiln image remove takes the lease layer with the record")
        #expect(String(decoding: try handle.readFile("/opt/kiln/waagent-provisioned"), as: UTF8.self) == "/var/lib/waagent/provisioned\n",
                "the agent itself provisioned the build VM")
        #expect(try handle.exists("/etc/cloud/cloud-init.disabled"), "the image's own configuration is untouched")
        #expect(String(decoding: try handle.readFile("/etc/waagent.conf"), as: UTF8.self).contains("Provisioning.Agent=waagent"))
    }

    @Test("""
    an image networked and provisioned as RHEL's Azure images are (NetworkManager, cloud-init with the Azure \
    datasource only and RHEL's settings, no Azure Linux agent), imported as a raw file, builds end to end with the \
    metadata service, a File, a reboot and the template's own deprovisioning script, keeping nothing of Kiln's
    """)
    func networkManagerImage() async throws {
        let work = try Workspace()
        defer { try? FileManager.default.removeItem(atPath: work.state.path) }
        let deprovisioning = ["set -e", "cloud-init clean --logs --seed", "rm -f /etc/NetworkManager/system-connections/cloud-init-*",
                              "truncate -s 0 /etc/machine-id", "echo template-deprovisioned > /var/lib/deprovisioned-by", "sync"]
        let (events, handle, _) = try await buildBroughtImage(BroughtImage(recipe: "debian-12-nm", urn: "Contoso:nm-debian:12:1.0.0",
                                                                           fileFormat: "raw", provisioning: "cloud-init-azure",
                                                                           deprovisioningScript: deprovisioning), work: work)
        defer { handle.close() }
        let messages = events.compactMap { $0["message"] as? String }
        #expect(messages.contains { $0.contains("the guest reported Ready to the wireserver") }, "cloud-init's Azure datasource reported ready: \(messages)")
        #expect(String(decoding: try handle.readFile("/var/lib/deprovisioned-by"), as: UTF8.self) == "template-deprovisioned\n",
                "the template's /tmp/DeprovisioningScript.sh ran instead of waagent")
        #expect(try !handle.exists("/usr/sbin/waagent"))
        #expect(try handle.exists("/etc/systemd/system/multi-user.target.wants/NetworkManager.service"), "the image's own network stack is untouched")
        #expect(try handle.ls("/etc/NetworkManager/system-connections").isEmpty, "the template's script removed cloud-init's connection")
    }
}
