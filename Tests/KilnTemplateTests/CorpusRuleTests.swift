import Testing
@testable import KilnTemplate

/// What a run over 42 public AIB templates found Kiln refusing although the service accepts it (issue 14, second pass).
@Suite("Corpus rules (issue 14)")
struct CorpusRuleTests {
    private func windows(_ customize: String) -> String {
        linuxTemplate(customize: customize)
            .replacingOccurrences(of: #""publisher": "Debian", "offer": "debian-12", "sku": "12""#,
                                  with: #""publisher": "MicrosoftWindowsServer", "offer": "WindowsServer", "sku": "2019-Datacenter""#)
    }

    @Test("empty restartCommand and restartCheckCommand mean the defaults, as the AVD portal's export writes them")
    func emptyRestartCommands() throws {
        let result = TemplateLoader.load(text: windows(#"[{"type": "WindowsRestart", "restartCommand": "", "restartCheckCommand": "", "restartTimeout": "10m"}]"#))
        #expect(result.isValid, "\(result.errors)")
        let template = try #require(result.templates.first?.template)
        guard case .windowsRestart(let step) = template.properties.customize.first else {
            Issue.record("expected a WindowsRestart step"); return
        }
        #expect(step.restartCommand == WindowsRestartCustomizer.defaultRestartCommand)
        #expect(step.restartCheckCommand == nil)
    }

    @Test("an empty stagingResourceGroup is unset: the service then makes a resource group with a random name")
    func emptyStagingResourceGroup() throws {
        let result = TemplateLoader.load(text: linuxTemplate(properties: #""stagingResourceGroup": "","#))
        #expect(result.isValid, "\(result.errors)")
        #expect(result.templates.first?.template.properties.stagingResourceGroup == nil)
    }

    @Test("null artifactTags values are left out with a warning; a top-level id is read-only")
    func nullTagsAndID() throws {
        let tags = TemplateLoader.load(text: linuxTemplate(distribute: #"[{"type": "VHD", "runOutputName": "vhd", "artifactTags": {"a": "b", "sourceImageId": null}}]"#))
        #expect(tags.isValid, "\(tags.errors)")
        #expect(tags.warnings.map(\.path.description) == ["properties.distribute[0].artifactTags.sourceImageId"])
        #expect(tags.templates.first?.template.properties.distribute.first?.artifactTags == [KeyValue("a", "b")])

        let id = TemplateLoader.load(text: linuxTemplate(topLevel: testIdentity + #""id": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.VirtualMachineImages/imageTemplates/img","#))
        #expect(id.isValid, "\(id.errors)")
        #expect(id.warnings.map(\.path.description) == ["id"])
        #expect(id.warnings.first?.message.contains("read-only") == true)
    }
}

@Suite("Corpus rules: a body without apiVersion (issue 14)")
struct MissingAPIVersionTests {
    @Test("a plain body without apiVersion is read with the newest rules and a notice; a deployment resource still needs one")
    func missingAPIVersion() throws {
        let plain = TemplateLoader.load(text: linuxTemplate().replacingOccurrences(of: #""apiVersion": "2022-07-01","#, with: ""))
        #expect(plain.isValid, "\(plain.errors)")
        #expect(plain.warnings.map(\.path.description) == ["apiVersion"])
        #expect(plain.warnings.first?.message.contains(APIVersion.newest.rawValue) == true)
        #expect(plain.templates.first?.template.apiVersion == APIVersion.newest)

        let deployment = TemplateLoader.load(text: armTemplate(parameters: "{}").replacingOccurrences(of: #""apiVersion": "2022-07-01", "#, with: ""))
        #expect(!deployment.isValid)
    }
}

@Suite("Corpus rules: resource copy loops (issue 14)")
struct CopyLoopTests {
    private func looped(count: String, name: String = "[concat('img-', copyIndex(1))]", command: String = "[concat('echo ', parameters('names')[copyIndex()])]") -> String {
        armTemplate(parameters: #"{"names": {"type": "array", "defaultValue": ["a", "b", "c"]}}"#, command: command)
            .replacingOccurrences(of: #""name": "img","#, with: #""name": "\#(name)", "copy": {"name": "images", "count": \#(count)},"#)
    }

    @Test("a resource with copy is read once per index, copyIndex() and copyIndex(offset) giving it")
    func expanded() throws {
        let result = TemplateLoader.load(text: looped(count: "\"[length(parameters('names'))]\""))
        #expect(result.isValid, "\(result.errors)")
        #expect(result.warnings.isEmpty, "\(result.warnings)")
        #expect(result.templates.map(\.template.name) == ["img-1", "img-2", "img-3"])
        let commands = result.templates.map { loaded -> String? in
            guard case .shell(let step)? = loaded.template.properties.customize.first, case .inline(let lines) = step.script else { return nil }
            return lines.first
        }
        #expect(commands == ["echo a", "echo b", "echo c"])
        #expect(result.templates.map(\.basePath.description) == ["resources[0]", "resources[0]", "resources[0]"])
    }

    @Test("copyIndex('loop') names the loop; outside a loop, or with another name, it is an error at the resource's path")
    func loopNames() throws {
        let named = TemplateLoader.load(text: looped(count: "2", name: "[concat('img-', copyIndex('images', 5))]"))
        #expect(named.templates.map(\.template.name) == ["img-5", "img-6"])
        let wrong = TemplateLoader.load(text: looped(count: "2", name: "[concat('img-', copyIndex('other'))]"))
        #expect(wrong.errors.map(\.path.description).allSatisfy { $0 == "resources[0].name" } && !wrong.errors.isEmpty, "\(wrong.errors)")
        let outside = TemplateLoader.load(text: armTemplate(command: "[string(copyIndex())]"))
        #expect(outside.errors.map(\.path.description) == ["resources[0].properties.customize[0].inline[0]"])
        let tooMany = TemplateLoader.load(text: looped(count: "801"))
        #expect(tooMany.errors.map(\.path.description) == ["resources[0].copy.count"])
    }
}
