import Testing
@testable import KilnTemplate
import KilnSupport

/// The user-assigned identity Azure requires from apiVersion 2020-02-14 on.
let testIdentity = #" \#(identityMember)"#
let identityMember = #""identity": {"type": "UserAssigned", "userAssignedIdentities": {"/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourcegroups/id/providers/Microsoft.ManagedIdentity/userAssignedIdentities/builder": {}}},"#

/// A minimal valid Linux template; `properties` members can be replaced by string surgery-free builders below.
func linuxTemplate(apiVersion: String = "2022-07-01", properties extra: String = "", customize: String = #"[{"type": "Shell", "name": "hello", "inline": ["echo hello"]}]"#,
                   distribute: String = #"[{"type": "VHD", "runOutputName": "vhd"}]"#, topLevel: String = testIdentity) -> String {
    """
    {
      "type": "Microsoft.VirtualMachineImages/imageTemplates",
      "apiVersion": "\(apiVersion)",
      "location": "westus2",\(topLevel)
      "properties": {\(extra)
        "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12", "version": "latest"},
        "customize": \(customize),
        "distribute": \(distribute)
      }
    }
    """
}

@Suite("Template model and validation")
struct TemplateTests {
    @Test("defaults are applied explicitly in the model")
    func defaults() throws {
        let text = linuxTemplate(customize: #"""
            [{"type": "PowerShell", "name": "ps", "inline": ["Write-Host hi"]},
             {"type": "WindowsRestart"},
             {"type": "WindowsUpdate", "name": "wu"}]
            """#, distribute: #"[{"type": "VHD", "runOutputName": "vhd"}]"#)
            .replacingOccurrences(of: #""publisher": "Debian", "offer": "debian-12", "sku": "12""#,
                                  with: #""publisher": "MicrosoftWindowsServer", "offer": "WindowsServer", "sku": "2019-Datacenter""#)
        let result = TemplateLoader.load(text: text, name: "win")
        #expect(result.isValid, "\(result.errors)")
        let template = try #require(result.templates.first?.template)
        #expect(template.name == "win")
        #expect(template.properties.buildTimeoutInMinutes == 240)
        #expect(template.properties.vmProfile.vmSize == "Standard_D1_v2")
        #expect(template.properties.vmProfile.osDiskSizeGB == 0)
        #expect(template.properties.errorHandling == ErrorHandling(onCustomizerError: .cleanup, onValidationError: .cleanup))
        guard case .powerShell(let ps) = template.properties.customize[0],
              case .windowsRestart(let restart) = template.properties.customize[1],
              case .windowsUpdate(let update) = template.properties.customize[2] else {
            Issue.record("unexpected customizers \(template.properties.customize)")
            return
        }
        #expect(ps.validExitCodes == [0])
        #expect(!ps.runElevated && !ps.runAsSystem)
        #expect(restart.name == nil)
        #expect(restart.restartCommand == #"shutdown /r /f /t 0 /c "packer restart""#)
        #expect(restart.restartTimeout == "5m")
        #expect(restart.restartTimeoutDuration == .seconds(300))
        #expect(update.searchCriteria == "BrowseOnly=0 and IsInstalled=0")
        #expect(update.filters == ["include:$true"])
        #expect(update.updateLimit == 1000)

        let printed = JSONPrinter.print(template.effectiveJSON)
        for fragment in [#""buildTimeoutInMinutes": 240"#, #""vmSize": "Standard_D1_v2""#, #""restartTimeout": "5m""#,
                         #""updateLimit": 1000"#, #""restartCommand": "shutdown /r /f /t 0 /c \"packer restart\"""#,
                         #""onCustomizerError": "cleanup""#, #""validExitCodes": [\#n"#] {
            #expect(printed.contains(fragment), "missing \(fragment) in \(printed)")
        }
        // What --print shows is itself a valid template that reads back to the same model.
        let reread = TemplateLoader.load(text: printed, name: "win")
        #expect(reread.isValid, "\(reread.errors)")
        #expect(reread.templates.first?.template == template)
    }

    @Test("buildTimeoutInMinutes 0 means 240; explicit values are kept; 1-5 warn")
    func buildTimeout() throws {
        let zero = TemplateLoader.load(text: linuxTemplate(properties: #""buildTimeoutInMinutes": 0,"#))
        #expect(zero.templates.first?.template.properties.buildTimeoutInMinutes == 240)
        let ninety = TemplateLoader.load(text: linuxTemplate(properties: #""buildTimeoutInMinutes": 90,"#))
        #expect(ninety.templates.first?.template.properties.buildTimeoutInMinutes == 90)
        let five = TemplateLoader.load(text: linuxTemplate(properties: #""buildTimeoutInMinutes": 5,"#))
        #expect(five.isValid)
        #expect(five.warnings.map(\.path.description) == ["properties.buildTimeoutInMinutes"])
    }

    @Test("settings with no local meaning are warnings, not errors")
    func warnings() {
        let subnet = "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/v/subnets/s"
        let identity = "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourcegroups/id/providers/Microsoft.ManagedIdentity/userAssignedIdentities/builder"
        let result = TemplateLoader.load(text: linuxTemplate(
            properties: #""vmProfile": {"vmSize": "Standard_D2s_v3", "vnetConfig": {"subnetId": "\#(subnet)"}},"#,
            topLevel: #" "identity": {"type": "UserAssigned", "userAssignedIdentities": {"\#(identity)": {}}},"#))
        #expect(result.isValid, "\(result.errors)")
        // identity is required (Azure's rule) and so no longer warns.
        #expect(Set(result.warnings.map(\.path.description)) == ["properties.vmProfile.vnetConfig"])
    }

    @Test("unknown properties warn with their path")
    func unknownProperty() {
        let result = TemplateLoader.load(text: linuxTemplate(customize: #"[{"type": "Shell", "name": "x", "inline": ["true"], "runAs": "root"}]"#))
        #expect(result.isValid)
        #expect(result.warnings.map(\.path.description) == ["properties.customize[0].runAs"])
    }

    @Test("names and values in other case are accepted; with 2024-02-01 they warn, as Azure now rejects them")
    func caseQuirks() throws {
        let customize = #"[{"type": "shell", "Name": "x", "Inline": "echo one"}]"#
        let old = TemplateLoader.load(text: linuxTemplate(apiVersion: "2022-07-01", customize: customize))
        #expect(old.isValid && old.warnings.isEmpty, "\(old.diagnostics)")
        let step = try #require(old.templates.first?.template.properties.customize.first)
        #expect(step == .shell(ShellCustomizer(name: "x", script: .inline(["echo one"]))))

        let new = TemplateLoader.load(text: linuxTemplate(apiVersion: "2024-02-01", customize: customize))
        #expect(new.isValid)
        #expect(Set(new.warnings.map(\.path.description)) == ["properties.customize[0].type", "properties.customize[0].name", "properties.customize[0].inline"])
    }

    @Test("features newer than the apiVersion warn and are honoured")
    func newerFeatures() throws {
        let result = TemplateLoader.load(text: linuxTemplate(apiVersion: "2020-02-14", properties: #""errorHandling": {"onCustomizerError": "abort"},"#))
        #expect(result.isValid)
        #expect(result.warnings.map(\.path.description) == ["properties.errorHandling"])
        #expect(result.templates.first?.template.properties.errorHandling.onCustomizerError == .abort)
    }

    @Test("every problem is listed, not just the first")
    func allProblems() {
        let result = TemplateLoader.load(text: linuxTemplate(
            properties: #""buildTimeoutInMinutes": 1000, "vmProfile": {"osDiskSizeGB": -1},"#,
            customize: #"[{"type": "Shell", "name": "a"}, {"type": "File", "name": "a", "sourceUri": "ftp://x/y", "destination": "/tmp/y"}]"#,
            distribute: #"[{"type": "VHD", "runOutputName": "bad name"}]"#))
        #expect(Set(result.errors.map(\.path.description)) == [
            "properties.buildTimeoutInMinutes", "properties.vmProfile.osDiskSizeGB", "properties.customize[0]",
            "properties.customize[1].sourceUri", "properties.distribute[0].runOutputName",
        ])
        // A repeated name is accepted with a warning (the service accepts it).
        #expect(result.warnings.map(\.path.description).contains("properties.customize[1].name"))
    }

    @Test("File on a Linux guest writes only under /tmp")
    func linuxFileDestination() {
        #expect(GuestRules.linuxFileDestinationProblem("/tmp/a/b.txt") == nil)
        #expect(GuestRules.linuxFileDestinationProblem("/etc/motd")?.contains("/tmp") == true)
        #expect(GuestRules.linuxFileDestinationProblem("/tmp/../etc/passwd") != nil)
        #expect(GuestRules.linuxFileDestinationProblem("/tmp") != nil)
    }

    @Test("a Windows-only customizer on a Linux publisher is an error")
    func osMismatch() {
        let result = TemplateLoader.load(text: linuxTemplate(customize: #"[{"type": "Shell", "name": "s", "inline": ["true"]}, {"type": "WindowsRestart"}]"#))
        // Windows customizers make the template a Windows one, so Shell is the step out of place.
        #expect(result.errors.map(\.path.description) == ["properties.customize[0].type"])
    }
}

@Suite("ARM deployment templates")
struct ARMTests {
    let wrapper = #"""
    {
      "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
      "contentVersion": "1.0.0.0",
      "parameters": {
        "imageTemplateName": {"type": "string", "defaultValue": "base"},
        "timeout": {"type": "int", "defaultValue": 60},
        "subscriptionId": {"type": "string", "defaultValue": "0b1f6471-1bf0-4dda-aec3-cb9272f09590"}
      },
      "variables": {"rg": "images", "imagePrefix": "[concat('img-', parameters('imageTemplateName'))]"},
      "resources": [
        {"type": "Microsoft.ManagedIdentity/userAssignedIdentities", "name": "id", "apiVersion": "2018-11-30", "location": "[resourceGroup().location]"},
        {
          "type": "Microsoft.VirtualMachineImages/imageTemplates",
          "apiVersion": "2022-07-01",
          "name": "[parameters('imageTemplateName')]",
          "location": "westus2", "identity": {"type": "UserAssigned", "userAssignedIdentities": {"/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourcegroups/id/providers/Microsoft.ManagedIdentity/userAssignedIdentities/builder": {}}},
          "properties": {
            "buildTimeoutInMinutes": "[parameters('timeout')]",
            "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12", "version": "latest"},
            "customize": [{"type": "Shell", "name": "literal", "inline": ["[[ -f /etc/os-release ]", "[[ -f x ] && echo ok"]}],
            "distribute": [{"type": "ManagedImage", "runOutputName": "mi", "location": "westus2",
              "imageId": "[concat('/subscriptions/', parameters('subscriptionId'), '/resourceGroups/', variables('rg'), '/providers/Microsoft.Compute/images/', variables('imagePrefix'))]"}]
          }
        }
      ]
    }
    """#

    @Test("parameters, variables, concat and [[ escapes are evaluated; other resources are ignored")
    func evaluation() throws {
        let result = TemplateLoader.load(text: wrapper)
        #expect(result.isValid, "\(result.errors)")
        #expect(result.isDeploymentTemplate)
        let loaded = try #require(result.templates.first)
        #expect(loaded.basePath.description == "resources[1]")
        #expect(loaded.template.name == "base")
        #expect(loaded.template.properties.buildTimeoutInMinutes == 60)
        #expect(loaded.template.properties.customize.first == .shell(ShellCustomizer(name: "literal", script: .inline(["[ -f /etc/os-release ]", "[[ -f x ] && echo ok"]))))
        guard case .managedImage(let image) = loaded.template.properties.distribute.first?.target else {
            Issue.record("expected a managed image target")
            return
        }
        #expect(image.imageId == "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/images/providers/Microsoft.Compute/images/img-base")
    }

    @Test("--parameter overrides defaults and is converted to the declared type")
    func overrides() throws {
        let result = TemplateLoader.load(text: wrapper, parameters: ["imageTemplateName": "custom", "TIMEOUT": "120"])
        #expect(result.isValid, "\(result.errors)")
        #expect(result.templates.first?.template.name == "custom")
        #expect(result.templates.first?.template.properties.buildTimeoutInMinutes == 120)

        let wrongType = TemplateLoader.load(text: wrapper, parameters: ["timeout": "soon"])
        #expect(wrongType.errors.map(\.path.description) == ["parameters.timeout"])
        let unknown = TemplateLoader.load(text: wrapper, parameters: ["nope": "x"])
        #expect(unknown.errors.map(\.path.description) == ["parameters"])
        #expect(unknown.errors.first?.message.contains("imageTemplateName") == true)
    }

    @Test("an unsupported expression is an error naming the expression and its path")
    func unsupported() throws {
        // reference() and list*() give a placeholder with a warning (CorpusRuleTests); pickZones() is not evaluated.
        let text = wrapper.replacingOccurrences(of: #""location": "westus2", "identity""#, with: #""location": "[first(pickZones('Microsoft.Compute', 'virtualMachines', 'westus2'))]", "identity""#)
        let result = TemplateLoader.load(text: text)
        let error = try #require(result.errors.first)
        #expect(result.errors.count == 1)
        #expect(error.path.description == "resources[1].location")
        #expect(error.message.contains("pickZones()"))
        #expect(error.message.contains("[first(pickZones('Microsoft.Compute', 'virtualMachines', 'westus2'))]"))
    }

    @Test("--parameter on a plain template is an error")
    func plainTemplateParameters() {
        let result = TemplateLoader.load(text: linuxTemplate(), parameters: ["a": "b"])
        #expect(!result.isValid)
    }
}

@Suite("JSON, durations, resource IDs")
struct ParsingTests {
    @Test("positions are 1-based lines and character columns")
    func positions() throws {
        let node = try JSONParser.parse("{\n  \"ä\": [1, \"x\"],\n  \"b\": true\n}")
        let members = try #require(node.members)
        #expect(members[0].value.position == SourcePosition(line: 2, column: 8))
        #expect(members[1].value.position == SourcePosition(line: 3, column: 8))
        do {
            _ = try JSONParser.parse("{\n  \"a\": 1\n  \"b\": 2\n}")
            Issue.record("expected a syntax error")
        } catch {
            #expect(error.position == SourcePosition(line: 3, column: 3))
        }
    }

    @Test("escapes, surrogate pairs and a BOM are handled; trailing garbage is not")
    func strings() throws {
        let node = try JSONParser.parse("\u{FEFF}\"a\\u00e9\\ud83d\\ude00\\n\"")
        #expect(node.stringValue == "aé😀\n")
        #expect(throws: JSONSyntaxError.self) { try JSONParser.parse("{} x") }
        #expect(throws: JSONSyntaxError.self) { try JSONParser.parse("{\"a\": [1,]}") }
        #expect(throws: JSONSyntaxError.self) { try JSONParser.parse("") }
        #expect(JSONPrinter.quote("a\"b\\\n\u{1}") == #""a\"b\\\n\u0001""#)
    }

    @Test("durations in Packer's style", arguments: [("5m", 300_000), ("90s", 90_000), ("2h", 7_200_000), ("1h30m", 5_400_000), ("1.5h", 5_400_000)])
    func durations(text: String, milliseconds: Int64) {
        #expect(DurationText.parse(text) == .milliseconds(milliseconds))
    }

    @Test("bad durations are rejected", arguments: ["5 minutes", "10x", "", "m", "5", "-5m"])
    func badDurations(text: String) {
        #expect(DurationText.parse(text) == nil)
    }

    @Test("durations print compactly")
    func formatDurations() {
        #expect(DurationText.format(.seconds(45)) == "45s")
        #expect(DurationText.format(.milliseconds(12_500)) == "12.5s")
        #expect(DurationText.format(.seconds(240)) == "4m0s")
        #expect(DurationText.format(.seconds(3723)) == "1h2m3s")
    }

    @Test("resource ID shapes")
    func resourceIDs() {
        let prefix = "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/rg/providers/"
        #expect(ResourceIDShape.managedImage.problem(with: prefix + "Microsoft.Compute/images/img") == nil)
        #expect(ResourceIDShape.managedImage.problem(with: prefix + "Microsoft.Compute/galleries/g/images/d") != nil)
        #expect(ResourceIDShape.galleryImage.problem(with: prefix + "Microsoft.Compute/galleries/g/images/d") == nil)
        #expect(ResourceIDShape.galleryImage.problem(with: prefix + "Microsoft.Compute/galleries/g/images/d/versions/1.2.3") == nil)
        #expect(ResourceIDShape.galleryImage.problem(with: prefix + "Microsoft.Compute/galleries/g/images/d/versions/latest") != nil)
        #expect(ResourceIDShape.galleryImageVersion.problem(with: prefix + "Microsoft.Compute/galleries/g/images/d/versions/latest") == nil)
        #expect(ResourceIDShape.galleryImageVersion.problem(with: prefix + "microsoft.compute/GALLERIES/g/images/d/versions/0.0.1") == nil)
        #expect(ResourceIDShape.galleryImageVersion.problem(with: prefix + "Microsoft.Compute/galleries/g/images/d") != nil)
        #expect(ResourceIDShape.subnet.problem(with: prefix + "Microsoft.Network/virtualNetworks/v/subnets/s") == nil)
        #expect(ResourceIDShape.managedImage.problem(with: "/subscriptions/<sub>/resourceGroups/rg/providers/Microsoft.Compute/images/i") != nil)
        #expect(ResourceIDShape.managedImage.problem(with: "/subscriptions/not-a-guid/resourceGroups/rg/providers/Microsoft.Compute/images/i") != nil)
        #expect(ResourceID(prefix + "Microsoft.Compute/images/Img")?.key == (prefix + "microsoft.compute/images/img").lowercased())
    }

    @Test("gallery versions order numerically")
    func galleryVersions() {
        #expect(GalleryVersion("1.10.0")! > GalleryVersion("1.9.99")!)
        #expect(GalleryVersion("1.2") == nil)
        #expect(GalleryVersion("1.2.x") == nil)
        #expect(GalleryVersion("0.0.1")?.description == "0.0.1")
    }

    @Test("runOutputName rules")
    func runOutputNames() {
        #expect(RunOutputName.problem(with: "my-image_1.0") == nil)
        #expect(RunOutputName.problem(with: String(repeating: "a", count: 64)) == nil)
        for bad in [String(repeating: "a", count: 65), "", ".", "..", "a b", "a/b"] {
            #expect(RunOutputName.problem(with: bad) != nil, "\(bad)")
        }
    }
}
