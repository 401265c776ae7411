import Foundation
import KilnTestSupport
import Testing

/// `kiln build --plan`: the plan of a build (source, VM, accelerator, steps with their template paths, downloads
/// and checkpoint keys) printed without booting, fetching or building anything.
@Suite("kiln build --plan")
struct BuildPlanCLITests {
    @Test func printsThePlanWithoutBooting() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-plan-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let raw = folder + "/disk.raw"
        #expect(FileManager.default.createFile(atPath: raw, contents: Data(count: 8 << 20)))
        let partitioned = try await ImageImportCLITests.tool("sh", ["-c", "echo 'start=2048, type=83' | /usr/sbin/sfdisk -q '\(raw)'"])
        #expect(partitioned.status == 0, "\(partitioned.output)")
        let environment = ["KILN_STATE_DIR": folder + "/state",
                           "KILN_CATALOG": URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                               .deletingLastPathComponent().appendingPathComponent("images/catalog.json").path]
        let imported = try await KilnExecutable.run(["image", "import", raw, "--urn", "Contoso:lab:disk:1.0", "--no-inspect"], environment: environment)
        #expect(imported.status == 0, "\(imported.stderr)")
        let checksum = String(repeating: "ab", count: 32)
        let template = try TemplateFiles.write("""
        {"type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-02-14", "location": "westeurope",
         "identity": {"type": "UserAssigned", "userAssignedIdentities": {"/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourcegroups/id/providers/Microsoft.ManagedIdentity/userAssignedIdentities/builder": {}}},
         "properties": {
           "source": {"type": "PlatformImage", "publisher": "Contoso", "offer": "lab", "sku": "disk", "version": "latest"},
           "vmProfile": {"vmSize": "Standard_D2s_v3"},
           "customize": [
             {"type": "Shell", "name": "first", "inline": ["echo one"]},
             {"type": "Shell", "name": "fetched", "scriptUri": "https://example.invalid/setup.sh", "sha256Checksum": "\(checksum)"},
             {"type": "Shell", "name": "last", "inline": ["echo three"]}],
           "distribute": [{"type": "VHD", "runOutputName": "disk", "uri": "\(folder)/out.vhd"}]}}
        """)
        defer { try? FileManager.default.removeItem(atPath: template) }
        let result = try await KilnExecutable.run(["build", template, "--plan", "--accel", "tcg"], environment: environment)
        #expect(result.status == 0, "\(result.stderr)")
        let lines = result.stdout.split(separator: "\n").map(String.init)
        #expect(lines.contains { $0.hasPrefix("source: Contoso:lab:disk:1.0 (\(raw), raw, bios)") }, "\(result.stdout)")
        #expect(lines.contains("guest: Linux"), "\(result.stdout)")
        #expect(lines.contains("vm: Standard_D2s_v3 (2 vCPU, 8192 MiB), os disk as the source"), "\(result.stdout)")
        #expect(lines.contains("accelerator: tcg (--accel tcg given)"), "\(result.stdout)")
        #expect(lines.contains("  [0] first (Shell) properties.customize[0]"), "\(result.stdout)")
        #expect(lines.contains("      download https://example.invalid/setup.sh (properties.customize[1].scriptUri), sha256 \(checksum)"), "\(result.stdout)")
        let keys = lines.filter { $0.hasPrefix("      checkpoint ") }.map { String($0.dropFirst("      checkpoint ".count)) }
        #expect(keys.count == 3, "\(result.stdout)")
        #expect(keys.first?.count == 12 && keys.first?.allSatisfy(\.isHexDigit) == true, "\(result.stdout)")
        #expect(keys.dropFirst().allSatisfy { $0 == "known after fetch" }, "a key hashes what its step downloads: \(result.stdout)")
        #expect(lines.contains("  [0] VHD disk → \(folder)/out.vhd"), "\(result.stdout)")
        #expect(lines.last == "nothing was booted")
        let runs = (try? FileManager.default.contentsOfDirectory(atPath: folder + "/state/runs")) ?? []
        #expect(runs.isEmpty, "no run was started: \(runs)")
    }

    @Test func aSourceMissingFromTheLocalStoreFailsThePlan() async throws {
        let template = try TemplateFiles.write("""
        {"type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-02-14", "location": "westeurope",
         "identity": {"type": "UserAssigned", "userAssignedIdentities": {"/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourcegroups/id/providers/Microsoft.ManagedIdentity/userAssignedIdentities/builder": {}}},
         "properties": {
           "source": {"type": "ManagedImage", "imageId": "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/rg/providers/Microsoft.Compute/images/missing"},
           "customize": [{"type": "Shell", "inline": ["true"]}],
           "distribute": [{"type": "VHD", "runOutputName": "disk"}]}}
        """)
        defer { try? FileManager.default.removeItem(atPath: template) }
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-plan-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: state) }
        let result = try await KilnExecutable.run(["build", template, "--plan", "--accel", "tcg"], environment: ["KILN_STATE_DIR": state])
        #expect(result.status != 0)
        #expect(result.stderr.contains("properties.source.imageId: expected a managed image"), "\(result.stderr)")
    }

    @Test("--hosts FILE names the hosts to choose from, one URI a line with comments; a line that is not a URI is refused naming the file and line")
    func hostsFile() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-hosts-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let environment = ["KILN_STATE_DIR": folder + "/state"]
        let template = try TemplateFiles.write("""
        {"type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-02-14", "location": "westeurope",
         "properties": {
           "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12", "version": "latest"},
           "customize": [{"type": "Shell", "name": "one", "inline": ["echo one"]}],
           "distribute": [{"type": "VHD", "runOutputName": "disk", "uri": "\(folder)/out.vhd"}]}}
        """)
        defer { try? FileManager.default.removeItem(atPath: template) }

        // Two hosts nobody listens for (ports 1 and 2 on the loopback): both are asked, both skipped.
        let hosts = folder + "/hosts"
        try """
        # the lab
        qemu+ssh://root@127.0.0.1:1/system   # rack 1

        qemu+ssh://root@127.0.0.1:2/system
        """.write(toFile: hosts, atomically: true, encoding: .utf8)
        let chosen = try await KilnExecutable.run(["build", template, "--plan", "--hosts", hosts], environment: environment)
        #expect(chosen.status != 0)
        #expect(chosen.stderr.contains("kiln: host 127.0.0.1:1 skipped: "), "\(chosen.stderr)")
        #expect(chosen.stderr.contains("kiln: host 127.0.0.1:2 skipped: "), "\(chosen.stderr)")
        #expect(chosen.stderr.contains("no build host could take the build"), "\(chosen.stderr)")

        let bad = folder + "/bad-hosts"
        try "qemu+ssh://root@lab1/system\nlab2\n".write(toFile: bad, atomically: true, encoding: .utf8)
        let refused = try await KilnExecutable.run(["build", template, "--plan", "--hosts", bad], environment: environment)
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("--hosts \(bad) line 2: expected a libvirt URI such as qemu+ssh://root@lab1/system, found \"lab2\""), "\(refused.stderr)")
        let missing = try await KilnExecutable.run(["build", template, "--plan", "--hosts", folder + "/none"], environment: environment)
        #expect(missing.stderr.contains("--hosts \(folder)/none: cannot read it"), "\(missing.stderr)")
    }
}
