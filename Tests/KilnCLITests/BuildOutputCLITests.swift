import Foundation
import KilnTestSupport
import Testing

@Suite("kiln build: VHD targets never overwrite")
struct BuildOutputCLITests {
    func template(uri: String) throws -> String {
        try TemplateFiles.write("""
        {"type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-07-01", "location": "westus2",
         "identity": {"type": "UserAssigned", "userAssignedIdentities": {"/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourcegroups/id/providers/Microsoft.ManagedIdentity/userAssignedIdentities/builder": {}}},
         "properties": {
           "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12", "version": "latest"},
           "customize": [{"type": "Shell", "name": "s", "inline": ["true"]}],
           "distribute": [{"type": "VHD", "runOutputName": "kept"}, {"type": "VHD", "runOutputName": "out", "uri": "\(uri)"}]}}
        """)
    }

    @Test("an existing file at a VHD uri, or a uri in the state directory, stops the build before anything is created")
    func refusedBeforeBoot() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-build-out-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let state = directory + "/state"
        let existing = directory + "/users-file.vhd"
        try Data("precious".utf8).write(to: URL(fileURLWithPath: existing))

        let path = try template(uri: "file://" + existing)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let result = try await KilnExecutable.run(["build", path, "--state-dir", state])
        #expect(result.status != 0)
        #expect((result.stdout + result.stderr).contains("\(path): properties.distribute[1].uri: expected no file at \(existing), found one (8 bytes); pass --force to replace it"), "\(result.stderr)")
        #expect(FileManager.default.contents(atPath: existing) == Data("precious".utf8))
        #expect(!FileManager.default.fileExists(atPath: state + "/runs"), "a refused build leaves no run directory")

        let inState = try template(uri: state + "/kiln.sqlite")
        defer { try? FileManager.default.removeItem(atPath: inState) }
        let refused = try await KilnExecutable.run(["build", inState, "--state-dir", state, "--force"])
        #expect(refused.status != 0)
        #expect((refused.stdout + refused.stderr).contains("properties.distribute[1].uri: expected a path outside Kiln's state and cache directory \(state)"), "\(refused.stderr)")
    }
}
