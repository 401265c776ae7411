import Foundation
import KilnTestSupport
import Testing

/// `kiln template` and `kiln image` on local state, without a VM (the VM suite runs and cancels real builds).
@Suite("kiln template (local state)")
struct TemplateCLITests {
    final class State {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-cli-state-\(UUID().uuidString)").path
        deinit { try? FileManager.default.removeItem(atPath: path) }

        func kiln(_ arguments: [String]) async throws -> KilnExecutable.Result {
            try await KilnExecutable.run(arguments, environment: ["KILN_STATE_DIR": path])
        }
    }

    static let template = """
    {"type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-07-01", "location": "northeurope",
     "identity": {"type": "UserAssigned", "userAssignedIdentities": {"/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourcegroups/id/providers/Microsoft.ManagedIdentity/userAssignedIdentities/builder": {}}},
     "tags": {"team": "images"},
     "properties": {
       "source": {"type": "SharedImageVersion", "imageVersionId": "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/d/versions/latest"},
       "customize": [{"type": "Shell", "name": "x", "inline": ["true"]}],
       "distribute": [{"type": "VHD", "runOutputName": "v"}]}}
    """

    @Test("a securestring given in a parameter file is not stored by template create; on the command line it is refused")
    func secureParametersAreNotStored() async throws {
        let state = State()
        let file = try TemplateFiles.write(ValidateParameterCLITests.template)
        let secret = "hunter2-never-stored"
        let parameters = try TemplateFiles.write(#"{"parameters": {"word": {"value": "plain-word"}, "token": {"value": "\#(secret)"}}}"#)
        defer {
            try? FileManager.default.removeItem(atPath: file)
            try? FileManager.default.removeItem(atPath: parameters)
        }
        let created = try await state.kiln(["template", "create", "secure", file, "--parameters", parameters])
        #expect(created.status == 0, "\(created.stderr)")
        #expect(created.stdout.contains("KILN_PARAMETER_token"), "the user is told where the value comes from at run time: \(created.stdout)")
        var stored = Data()
        for name in (try FileManager.default.subpathsOfDirectory(atPath: state.path)) {
            stored += FileManager.default.contents(atPath: state.path + "/" + name) ?? Data()
        }
        #expect(stored.range(of: Data(secret.utf8)) == nil, "the secret is nowhere in the state directory")
        #expect(stored.range(of: Data("plain-word".utf8)) != nil, "ordinary parameters are kept")

        let onCommandLine = try await state.kiln(["template", "create", "secure2", file, "--parameter", "word=w", "--parameter", "token=\(secret)"])
        #expect(onCommandLine.status == 1)
        #expect(onCommandLine.stderr.contains("found it on the command line (--parameter)"), "\(onCommandLine.stderr)")
        #expect(!onCommandLine.stderr.contains(secret))
    }

    @Test("create, list, show (text and az-shaped JSON), delete; names compare without case; the stored copy is independent of the file")
    func lifecycle() async throws {
        let state = State()
        let file = try TemplateFiles.write(Self.template)
        defer { try? FileManager.default.removeItem(atPath: file) }

        let created = try await state.kiln(["template", "create", "Golden", file])
        #expect(created.status == 0, "\(created.stderr)")
        let again = try await state.kiln(["template", "create", "golden", file])
        #expect(again.status == 1)
        #expect(again.stderr.contains("found an existing template Golden"))

        // Editing the file after create changes nothing: AIB keeps the template as created.
        try "not json".write(toFile: file, atomically: true, encoding: .utf8)

        let list = try await state.kiln(["template", "list"])
        #expect(list.stdout.contains("Golden") && list.stdout.contains("northeurope"), "\(list.stdout)")

        let show = try await state.kiln(["template", "show", "GOLDEN", "--json"])
        #expect(show.status == 0, "\(show.stderr)")
        let resource = try #require(try JSONSerialization.jsonObject(with: Data(show.stdout.utf8)) as? [String: Any])
        #expect(resource["id"] as? String == "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/kiln/providers/Microsoft.VirtualMachineImages/imageTemplates/Golden")
        #expect(resource["name"] as? String == "Golden")
        #expect(resource["type"] as? String == "Microsoft.VirtualMachineImages/imageTemplates")
        #expect((resource["tags"] as? [String: String]) == ["team": "images"])
        let properties = try #require(resource["properties"] as? [String: Any])
        #expect(properties["provisioningState"] as? String == "Succeeded")
        #expect(properties["buildTimeoutInMinutes"] as? Int == 240)
        #expect(properties["lastRunStatus"] == nil, "never run")

        // Nothing ran, so there is nothing to cancel, log or report.
        let cancel = try await state.kiln(["template", "cancel", "Golden"])
        #expect(cancel.status == 1 && cancel.stderr.contains("has no run in progress"), "\(cancel.stderr)")
        let logs = try await state.kiln(["template", "logs", "Golden"])
        #expect(logs.status == 1 && logs.stderr.contains("has not run yet"))
        let output = try await state.kiln(["template", "output", "Golden", "v"])
        #expect(output.status == 1 && output.stderr.contains("expected runs of a template named Golden"))

        let deleted = try await state.kiln(["template", "delete", "golden"])
        #expect(deleted.status == 0, "\(deleted.stderr)")
        #expect(deleted.stdout.contains("deleted template Golden"))
        let missing = try await state.kiln(["template", "show", "Golden"])
        #expect(missing.status == 1 && missing.stderr.contains("expected an image template named Golden, found none"))
        let templates = (try? FileManager.default.contentsOfDirectory(atPath: state.path + "/templates")) ?? []
        #expect(templates.isEmpty, "the stored copy is removed: \(templates)")
    }

    @Test("an invalid template is rejected by create and leaves nothing")
    func invalidCreate() async throws {
        let state = State()
        let file = try TemplateFiles.write(Self.template.replacingOccurrences(of: "\"runOutputName\": \"v\"", with: "\"runOutputName\": \"bad name!\""))
        defer { try? FileManager.default.removeItem(atPath: file) }
        let result = try await state.kiln(["template", "create", "broken", file])
        #expect(result.status == 1)
        #expect(result.stderr.contains("properties.distribute[0].runOutputName"), "\(result.stderr)")
        #expect(result.stderr.contains("nothing was created"))
        let list = try await state.kiln(["template", "list"])
        #expect(!list.stdout.contains("broken"))
    }

    @Test("a corrupt state database stops every command with a clear error and stays byte for byte as it was")
    func corruptState() async throws {
        let state = State()
        try FileManager.default.createDirectory(atPath: state.path, withIntermediateDirectories: true)
        let database = state.path + "/kiln.sqlite"
        let junk = Data("SQLite format 3\u{0}".utf8) + Data((0..<4080).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        try junk.write(to: URL(fileURLWithPath: database))
        for arguments in [["template", "list"], ["image", "list"], ["template", "show", "x"]] {
            let result = try await state.kiln(arguments)
            #expect(result.status == 1, "\(arguments)")
            #expect(result.stderr.contains("the state database \(database) is not a healthy SQLite database"), "\(result.stderr)")
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: database)) == junk)
    }

    @Test("image remove: a resource ID that is not in the store is a clear error")
    func removeMissing() async throws {
        let state = State()
        let id = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg/providers/Microsoft.Compute/images/nope"
        let result = try await state.kiln(["image", "remove", id])
        #expect(result.status == 1)
        #expect(result.stderr.contains("expected a managed image or gallery image version \(id) in the local store, found none"), "\(result.stderr)")
    }
}
