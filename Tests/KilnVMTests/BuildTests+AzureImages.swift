import Foundation
import KilnGuestfs
import KilnSupport
import KilnTestSupport
import Testing

/// Images users bring: an image whose cloud-init reads only the Azure datasource (as Ubuntu's and RHEL's Azure
/// images are set up), imported as the fixed VHD Azure exports, built end to end with the build VM presented as
/// Azure presents it.
extension BuildTests {
    @Test("""
    an image whose cloud-init reads only the Azure datasource, imported as a fixed VHD, is provisioned through \
    ovf-env.xml, the wireserver and the instance metadata service; a step reads the metadata, a File lands, a reboot \
    is survived, and the image keeps nothing of Kiln's
    """)
    func azureOnlyCloudInitImage() async throws {
        let work = try Workspace()
        defer { try? FileManager.default.removeItem(atPath: work.state.path) }
        let built = try await Subprocess.run(VMTestEnvironment.repositoryRoot.path + "/scripts/build-image", ["--print-path", "debian-12-azure"])
        let qcow2 = try #require(built.succeeded ? built.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) : nil,
                                 "scripts/build-image debian-12-azure first (scripts/test does)")
        // As downloaded from Azure: a fixed VHD.
        let vhd = work.files + "/azure-debian.vhd"
        let converted = try await Subprocess.run("qemu-img", ["convert", "-f", "qcow2", "-O", "vpc", "-o", "subformat=fixed,force_size", qcow2, vhd])
        #expect(converted.succeeded, "\(converted.stderrText)")
        let sourceBefore = try FileManager.default.attributesOfItem(atPath: vhd)

        let imported = try work.kiln(["image", "import", vhd, "--urn", "Contoso:azure-debian:12:1.0.0"])
        #expect(imported.status == 0, "\(imported.stderr)")
        #expect(imported.stdout.contains("vpc (VHD)"), "the format is decided at import and shown: \(imported.stdout)")
        #expect(imported.stdout.contains("provisioning cloud-init-azure"), "\(imported.stdout)")
        #expect(imported.stderr.contains("datasource_list [ Azure ]"), "\(imported.stderr)")

        let payload = try work.write("payload.txt", "payload for the Azure image\n")
        let template = try work.write("azure-image.json", """
        {
          "type": "Microsoft.VirtualMachineImages/imageTemplates",
          "apiVersion": "2022-07-01",
          "location": "northeurope",
          "tags": {"team": "images", "stage": "lab"},
          "identity": {"type": "UserAssigned", "userAssignedIdentities": {"/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/aib": {}}},
          "properties": {
            "buildTimeoutInMinutes": 60,
            "vmProfile": {"vmSize": "Standard_D2s_v3"},
            "source": {"type": "PlatformImage", "publisher": "Contoso", "offer": "azure-debian", "sku": "12", "version": "1.0.0"},
            "customize": [
              {"type": "Shell", "name": "metadata", "inline": [
                "sudo mkdir -p /opt/kiln",
                "curl -sf -H Metadata:true 'http://169.254.169.254/metadata/instance/compute/location?api-version=2021-02-01&format=text' | sudo tee /opt/kiln/location",
                "curl -sf -H Metadata:true 'http://169.254.169.254/metadata/instance?api-version=2021-02-01' | sudo tee /opt/kiln/instance.json",
                "cat /proc/sys/kernel/random/boot_id | sudo tee /opt/kiln/boot-before"
              ]},
              {"type": "File", "name": "payload", "sourceUri": "file://\(payload)", "destination": "/tmp/payload.txt"},
              {"type": "Shell", "name": "keep-payload", "inline": ["sudo mv /tmp/payload.txt /opt/kiln/payload.txt"]},
              {"type": "Shell", "name": "reboot", "inline": ["sudo reboot"]},
              {"type": "Shell", "name": "after-reboot", "inline": ["cat /proc/sys/kernel/random/boot_id | sudo tee /opt/kiln/boot-after"]}
            ],
            "distribute": [{"type": "VHD", "runOutputName": "azureVhd"}]
          }
        }
        """)
        let result = try work.build(template)
        let events = work.events(result)
        let final = events.last { $0["event"] as? String == "result" }
        #expect(final?["runState"] as? String == "Succeeded", "\(final ?? [:])\nstderr:\n\(result.stderr.suffix(3000))")
        let messages = events.compactMap { $0["message"] as? String }
        #expect(messages.contains { $0.contains("presented as Azure") }, "\(messages)")
        #expect(messages.contains { $0.contains("the guest reported Ready to the wireserver") }, "cloud-init's Azure datasource reported ready: \(messages)")
        work.expectNothingLeftBehind(final)

        let runID = try #require(final?["runID"] as? String)
        let image = work.state.runsPath + "/\(runID)/azureVhd.vhd"
        let handle = try GuestfsHandle()
        defer { handle.close() }
        if await VMTestEnvironment.accelerator() == .tcg { try handle.setBackendSettings(["force_tcg"]) }
        try handle.setBackend("direct")
        try handle.addDrive(image, format: "vpc", readOnly: true)
        try handle.launch()
        let os = try #require(try handle.inspectOperatingSystems().first)
        try handle.mountAll(os, readOnly: true)
        func read(_ path: String) throws -> String { String(decoding: try handle.readFile(path), as: UTF8.self) }
        // The metadata service answered as AIB's build VM would.
        #expect(try read("/opt/kiln/location") == "northeurope")
        let instance = try JSONSerialization.jsonObject(with: Data(try handle.readFile("/opt/kiln/instance.json"))) as? [String: Any]
        let compute = instance?["compute"] as? [String: Any]
        #expect(compute?["vmSize"] as? String == "Standard_D2s_v3")
        #expect(compute?["osType"] as? String == "Linux")
        #expect(compute?["tags"] as? String == "stage:lab;team:images")
        #expect(compute?["offer"] as? String == "azure-debian")
        #expect(try read("/opt/kiln/payload.txt") == "payload for the Azure image\n")
        #expect(try read("/opt/kiln/boot-before") != (try read("/opt/kiln/boot-after")))
        // Nothing of Kiln's: no build user, no sudoers entry, no provisioning file, no script, no seed.
        let accounts = try read("/etc/passwd").split(separator: "\n").map { $0.prefix { $0 != ":" } }
        #expect(!accounts.contains("packer"))
        #expect(try !handle.exists("/home/packer"))
        #expect(try !handle.exists("/etc/sudoers.d/90-cloud-init-users"))
        #expect(try !handle.exists("/var/lib/waagent/ovf-env.xml"))
        #expect(try read("/etc/hostname").hasPrefix("localhost"), "waagent -deprovision+user ran (it resets the host name), although the reboot emptied /tmp")
        #expect(try !handle.exists("/var/lib/cloud/seed/nocloud"))
        let leftovers = try handle.ls("/tmp").filter { $0.hasPrefix("script_") || $0 == "DeprovisioningScript.sh" }
        #expect(leftovers.isEmpty, "\(leftovers)")
        #expect(try read("/etc/cloud/cloud.cfg.d/99_azure_datasource.cfg").contains("datasource_list: [ Azure ]"), "the image's own configuration is untouched")
        handle.close()

        // The imported file is never written.
        let sourceAfter = try FileManager.default.attributesOfItem(atPath: vhd)
        #expect(sourceAfter[.modificationDate] as? Date == sourceBefore[.modificationDate] as? Date)
        #expect(sourceAfter[.size] as? NSNumber == sourceBefore[.size] as? NSNumber)
    }
}
