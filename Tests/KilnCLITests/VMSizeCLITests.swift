import Foundation
import KilnTestSupport
import Testing

@Suite("kiln build and validate: an unknown vmSize")
struct VMSizeCLITests {
    /// An ARM wrapper, so that the path the messages name carries the resource's prefix.
    func template(size: String) throws -> String {
        try TemplateFiles.write("""
        {"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#", "contentVersion": "1.0.0.0",
         "resources": [{"type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-07-01", "name": "img", "location": "westus2",
         "identity": {"type": "UserAssigned", "userAssignedIdentities": {"/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourcegroups/id/providers/Microsoft.ManagedIdentity/userAssignedIdentities/builder": {}}},
         "properties": {
           "vmProfile": {"vmSize": "\(size)"},
           "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12", "version": "latest"},
           "customize": [{"type": "Shell", "name": "s", "inline": ["true"]}],
           "distribute": [{"type": "VHD", "runOutputName": "out"}]}}]}
        """)
    }

    @Test("build fails before anything is created, naming the path, the size and the closest known sizes; validate warns with the same")
    func unknownSize() async throws {
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-size-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: state) }
        let path = try template(size: "Standard_D4s_v9")
        defer { try? FileManager.default.removeItem(atPath: path) }

        let build = try await KilnExecutable.run(["build", path, "--state-dir", state])
        #expect(build.status != 0)
        let output = build.stdout + build.stderr
        #expect(output.contains("\(path): resources[0].properties.vmProfile.vmSize: expected an Azure VM size Kiln knows"), "\(output)")
        #expect(output.contains("found \"Standard_D4s_v9\""), "\(output)")
        #expect(output.contains("the closest known: Standard_D4s_v3, Standard_D4s_v4, Standard_D4s_v5"), "\(output)")
        #expect(!FileManager.default.fileExists(atPath: state + "/runs"), "a refused build leaves no run directory")

        let validate = try await KilnExecutable.run(["validate", path])
        #expect(validate.status == 0)
        #expect(validate.stderr.contains("resources[0].properties.vmProfile.vmSize"), "\(validate.stderr)")
        #expect(validate.stderr.contains("the closest known: Standard_D4s_v3, Standard_D4s_v4, Standard_D4s_v5"), "\(validate.stderr)")
    }
}
