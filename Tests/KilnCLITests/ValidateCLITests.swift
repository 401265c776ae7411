import Foundation
import KilnTestSupport
import Testing

enum TemplateFiles {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/templates")

    static func write(_ text: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-cli-\(UUID().uuidString).json").path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }
}

@Suite("kiln validate")
struct ValidateCLITests {
    @Test("a valid template exits 0 and names its templates")
    func valid() async throws {
        let file = TemplateFiles.fixtures.appendingPathComponent("valid/user-linux-debian-vhd.json").path
        let result = try await KilnExecutable.run(["validate", file])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("valid"))
    }

    @Test("--print shows the effective template with defaults")
    func printEffective() async throws {
        let path = try TemplateFiles.write("""
        {"type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2020-02-14", "location": "westus2", "identity": {"type": "UserAssigned", "userAssignedIdentities": {"/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourcegroups/id/providers/Microsoft.ManagedIdentity/userAssignedIdentities/builder": {}}},
         "properties": {"buildTimeoutInMinutes": 0,
           "source": {"type": "PlatformImage", "publisher": "MicrosoftWindowsServer", "offer": "WindowsServer", "sku": "2019-Datacenter", "version": "latest"},
           "customize": [{"type": "WindowsRestart"}, {"type": "WindowsUpdate"}],
           "distribute": [{"type": "VHD", "runOutputName": "v"}]}}
        """)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let result = try await KilnExecutable.run(["validate", path, "--print"])
        #expect(result.status == 0, "\(result.stderr)")
        let json = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
        let properties = try #require(json?["properties"] as? [String: Any])
        #expect(properties["buildTimeoutInMinutes"] as? Int == 240)
        #expect((properties["vmProfile"] as? [String: Any])?["vmSize"] as? String == "Standard_D1_v2")
        let steps = try #require(properties["customize"] as? [[String: Any]])
        #expect(steps[0]["restartTimeout"] as? String == "5m")
        #expect(steps[0]["restartCommand"] as? String == #"shutdown /r /f /t 0 /c "packer restart""#)
        #expect(steps[1]["updateLimit"] as? Int == 1000)
    }

    @Test("an invalid template exits 1 with one line per problem, each naming its path")
    func invalid() async throws {
        let file = TemplateFiles.fixtures.appendingPathComponent("invalid/69-several-problems.json").path
        let result = try await KilnExecutable.run(["validate", file])
        #expect(result.status == 1)
        let lines = result.stderr.split(separator: "\n").filter { $0.contains(": error: ") }
        #expect(lines.count >= 3)
        for line in lines { #expect(line.contains("properties."), "\(line)") }
    }

    @Test("malformed JSON names line and column")
    func malformed() async throws {
        let path = try TemplateFiles.write("{\n  \"type\": \"x\"\n  \"apiVersion\": \"2020-02-14\"\n}")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let result = try await KilnExecutable.run(["validate", path])
        #expect(result.status == 1)
        #expect(result.stderr.contains("\(path):3:3: error: malformed JSON"), "\(result.stderr)")
    }

    @Test("a missing file and a bad --parameter are clear errors")
    func usage() async throws {
        let missing = try await KilnExecutable.run(["validate", "/nonexistent/template.json"])
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("no such file"))
        let file = TemplateFiles.fixtures.appendingPathComponent("valid/arm-parameters.json").path
        let bad = try await KilnExecutable.run(["validate", file, "--parameter", "novalue"])
        #expect(bad.status != 0)
        #expect(bad.stderr.contains("key=value"))
        let override = try await KilnExecutable.run(["validate", file, "--parameter", "imageTemplateName=fromCLI", "--print"])
        #expect(override.status == 0, "\(override.stderr)")
        #expect(override.stdout.contains("\"fromCLI\""))
    }
}

@Suite("kiln validate with parameter files and scope flags")
struct ValidateParameterCLITests {
    static let template = """
    {
      "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
      "contentVersion": "1.0.0.0",
      "parameters": {"word": {"type": "string"}, "token": {"type": "securestring"}},
      "resources": [{
        "type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-07-01", "name": "img",
        "location": "[resourceGroup().location]", "identity": {"type": "UserAssigned", "userAssignedIdentities": {"/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourcegroups/id/providers/Microsoft.ManagedIdentity/userAssignedIdentities/builder": {}}},
        "properties": {
          "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12", "version": "latest"},
          "customize": [{"type": "Shell", "name": "s", "inline": ["[format('echo {0} {1} {2}', parameters('word'), parameters('token'), subscription().subscriptionId)]"]}],
          "distribute": [{"type": "VHD", "runOutputName": "vhd"}]
        }
      }]
    }
    """

    @Test("--parameters FILE and --parameter @FILE read az-style parameter files; secure values print as ***")
    func parameterFile() async throws {
        let path = try TemplateFiles.write(Self.template)
        let parameters = try TemplateFiles.write(#"{"parameters": {"word": {"value": "fromfile"}, "token": {"value": "hunter2-secret"}}}"#)
        defer {
            try? FileManager.default.removeItem(atPath: path)
            try? FileManager.default.removeItem(atPath: parameters)
        }
        for flags in [["--parameters", parameters], ["--parameter", "@" + parameters]] {
            let result = try await KilnExecutable.run(["validate", path, "--print", "--resource-group-location", "northeurope",
                                                 "--subscription-id", "11111111-2222-3333-4444-555555555555"] + flags)
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stdout.contains("echo fromfile *** 11111111-2222-3333-4444-555555555555"), "\(result.stdout)")
            #expect(result.stdout.contains("\"northeurope\""))
            #expect(!result.stdout.contains("hunter2-secret"))
        }
        let environment = try await KilnExecutable.run(["validate", path, "--parameter", "word=w"], environment: ["KILN_PARAMETER_token": "from-env"])
        #expect(environment.status == 0, "\(environment.stderr)")
        let missing = try await KilnExecutable.run(["validate", path, "--parameters", "/nonexistent/p.json"])
        #expect(missing.status != 0)
        #expect(missing.stderr.contains("/nonexistent/p.json"))
    }
}

@Suite("scripts/validate-corpus")
struct ValidateCorpusTests {
    @Test("prints a row per template and accepted N of M")
    func corpus() async throws {
        let root = TemplateFiles.fixtures.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let valid = TemplateFiles.fixtures.appendingPathComponent("valid")
        let templates = try FileManager.default.contentsOfDirectory(atPath: valid.path).filter { $0.hasSuffix(".json") && $0 != "manifest.json" }
        let (status, output) = try await OwnThread.run {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/bin/bash")
            process.arguments = [root.appendingPathComponent("scripts/validate-corpus").path, valid.path]
            process.environment = ProcessInfo.processInfo.environment.merging(["KILN": KilnExecutable.path]) { _, new in new }
            let pipe = Pipe()
            process.standardOutput = pipe
            try process.run()
            let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            return (process.terminationStatus, output)
        }
        #expect(status == 0)
        let lines = output.split(separator: "\n")
        #expect(lines.count == templates.count + 2, "\(output)")
        // arm-parameter-no-default.json needs a --parameter, which the corpus run does not give.
        #expect(lines.last == "accepted \(templates.count - 1) of \(templates.count)", "\(output)")
        #expect(output.contains("arm-parameter-no-default.json"))
    }
}

@Suite("kiln doctor and image list")
struct DoctorCLITests {
    @Test("doctor runs every check and says what it found")
    func doctor() async throws {
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-doctor-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: state) }
        let result = try await KilnExecutable.run(["doctor", "--skip-guestfs", "--state-dir", state])
        for check in ["libvirt:", "libvirt connection:", "qemu:", "accelerator:", "OVMF", "disk space:"] {
            #expect(result.stdout.contains(check), "\(result.stdout)")
        }
        #expect(result.stdout.contains("checks passed") || result.stdout.contains("checks failed"))
        #expect(result.status == (result.stdout.contains("FAIL") ? 1 : 0))
    }

    @Test("image list shows the catalog's URNs")
    func imageList() async throws {
        let catalog = TemplateFiles.fixtures.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("images/catalog.json").path
        let result = try await KilnExecutable.run(["image", "list"], environment: ["KILN_CATALOG": catalog])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("Debian:debian-12:12:"))
        #expect(result.stdout.contains("Debian:debian-12:12-gen2:"))
    }
}
