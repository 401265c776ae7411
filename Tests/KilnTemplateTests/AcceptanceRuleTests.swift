import Testing
@testable import KilnTemplate

@Suite("Acceptance rules (issue 14)")
struct AcceptanceRuleTests {
    @Test("a plain body with type Microsoft.VirtualMachineImages or no type is read as an image template, with a notice")
    func resourceTypeInBody() throws {
        let short = TemplateLoader.load(text: linuxTemplate().replacingOccurrences(of: "Microsoft.VirtualMachineImages/imageTemplates", with: "Microsoft.VirtualMachineImages"))
        #expect(short.isValid, "\(short.errors)")
        #expect(short.warnings.map(\.path.description) == ["type"])
        let none = TemplateLoader.load(text: linuxTemplate().replacingOccurrences(of: #""type": "Microsoft.VirtualMachineImages/imageTemplates","#, with: ""))
        #expect(none.isValid, "\(none.errors)")
        #expect(none.warnings.map(\.path.description) == ["type"])
        let other = TemplateLoader.load(text: linuxTemplate().replacingOccurrences(of: "Microsoft.VirtualMachineImages/imageTemplates", with: "Microsoft.Compute/images"))
        #expect(other.errors.map(\.path.description) == ["type"])
    }

    @Test("apiVersion: 2019-05-01-preview with its rules, a newer unknown one with the newest rules, an expression in a deployment")
    func apiVersions() throws {
        let preview = TemplateLoader.load(text: linuxTemplate(apiVersion: "2019-05-01-preview", topLevel: ""))
        #expect(preview.isValid, "\(preview.errors)")
        #expect(preview.warnings.first?.message.contains("2019-05-01-preview") == true)
        #expect(preview.templates.first?.template.apiVersion == .v2019_05_01_preview)

        let future = TemplateLoader.load(text: linuxTemplate(apiVersion: "2026-03-01"))
        #expect(future.isValid, "\(future.errors)")
        #expect(future.warnings.map(\.path.description) == ["apiVersion"])
        #expect(future.warnings.first?.message.contains("2024-02-01") == true)
        #expect(future.templates.first?.template.apiVersion == .v2024_02_01)

        let garbage = TemplateLoader.load(text: linuxTemplate(apiVersion: "2018-01-01"))
        #expect(garbage.errors.map(\.path.description) == ["apiVersion"])

        let parameterized = TemplateLoader.load(text: armTemplate(parameters: #"{"apiVersion": {"type": "string", "defaultValue": "2022-02-14"}}"#)
            .replacingOccurrences(of: #""apiVersion": "2022-07-01", "name": "img""#, with: #""apiVersion": "[parameters('apiVersion')]", "name": "img""#))
        #expect(parameterized.isValid, "\(parameterized.errors)")
        #expect(parameterized.templates.first?.template.apiVersion == .v2022_02_14)
    }

    @Test("identity is required from 2020-02-14 on, as the service's rule; a type problem comes first and does not hide it")
    func identityRequired() throws {
        let missing = TemplateLoader.load(text: linuxTemplate(topLevel: ""))
        #expect(missing.errors.map(\.path.description) == ["identity"])
        #expect(missing.errors.first?.message.contains("Azure Image Builder's rule") == true)
        let both = TemplateLoader.load(text: linuxTemplate(topLevel: "").replacingOccurrences(of: "Microsoft.VirtualMachineImages/imageTemplates", with: "Microsoft.Compute/images"))
        #expect(both.errors.map(\.path.description) == ["type", "identity"])
    }

    @Test("customizer names are optional, may be empty and may repeat; each step gets a distinct label")
    func customizerNames() throws {
        let result = TemplateLoader.load(text: linuxTemplate(customize: #"""
            [{"type": "Shell", "name": "", "inline": ["true"]},
             {"type": "Shell", "name": "setup", "inline": ["true"]},
             {"type": "Shell", "name": "setup", "inline": ["true"]},
             {"type": "Shell", "inline": ["true"]},
             {"type": "Shell", "name": "unique", "inline": ["true"]}]
            """#))
        #expect(result.isValid, "\(result.errors)")
        #expect(result.warnings.map(\.path.description) == ["properties.customize[2].name"])
        let loaded = try #require(result.templates.first)
        let labels = loaded.stepPaths.customize.compactMap { loaded.stepLabels[$0.description] }
        #expect(labels == ["customize[0] Shell", "customize[1] Shell \"setup\"", "customize[2] Shell \"setup\"", "customize[3] Shell", "unique"])
    }

    @Test("a WindowsUpdate filter without include:/exclude: is accepted with a warning saying it matches nothing")
    func windowsUpdateFilters() throws {
        let result = TemplateLoader.load(text: linuxTemplate(customize: #"[{"type": "WindowsUpdate", "filters": ["$_.BrowseOnly", "skip:$true", "include:$true"]}]"#)
            .replacingOccurrences(of: #""publisher": "Debian", "offer": "debian-12", "sku": "12""#,
                                  with: #""publisher": "MicrosoftWindowsServer", "offer": "WindowsServer", "sku": "2019-Datacenter""#))
        #expect(result.isValid, "\(result.errors)")
        #expect(result.warnings.map(\.path.description) == ["properties.customize[0].filters[0]", "properties.customize[0].filters[1]"])
        #expect(result.warnings.first?.message.contains("matching no update") == true)
    }

    @Test("integers and booleans written as strings are converted with a notice; other strings stay errors")
    func scalarStrings() throws {
        let result = TemplateLoader.load(text: linuxTemplate(customize: #"[{"type": "PowerShell", "name": "p", "inline": ["x"], "validExitCodes": ["0", "3010"], "runElevated": "True"}]"#)
            .replacingOccurrences(of: #""publisher": "Debian", "offer": "debian-12", "sku": "12""#,
                                  with: #""publisher": "MicrosoftWindowsServer", "offer": "WindowsServer", "sku": "2019-Datacenter""#))
        #expect(result.isValid, "\(result.errors)")
        guard case .powerShell(let step)? = result.templates.first?.template.properties.customize.first else {
            Issue.record("expected a PowerShell step")
            return
        }
        #expect(step.validExitCodes == [0, 3010])
        #expect(step.runElevated)
        #expect(Set(result.warnings.map(\.path.description)) == ["properties.customize[0].validExitCodes[0]", "properties.customize[0].validExitCodes[1]", "properties.customize[0].runElevated"])
        let words = TemplateLoader.load(text: linuxTemplate(properties: #""buildTimeoutInMinutes": "sixty","#))
        #expect(words.errors.map(\.path.description) == ["properties.buildTimeoutInMinutes"])
    }
}

@Suite("Azure VM sizes")
struct VMSizeTableTests {
    @Test("the table holds the published figures, without duplicates; validate warns about a size it does not know")
    func table() throws {
        #expect(AzureVMSize.named("standard_d2s_v5") == AzureVMSize(name: "Standard_D2s_v5", vCPUs: 2, memoryMiB: 8192))
        #expect(AzureVMSize.named("Standard_D96ls_v5") == AzureVMSize(name: "Standard_D96ls_v5", vCPUs: 96, memoryMiB: 196_608))
        #expect(AzureVMSize.named("Standard_D1_v2")?.memoryMiB == 3584)
        #expect(Set(AzureVMSize.table.map { $0.name.lowercased() }).count == AzureVMSize.table.count)
        #expect(AzureVMSize.table.count == 842 + 203)
        let known = TemplateLoader.load(text: linuxTemplate(properties: #""vmProfile": {"vmSize": "Standard_D4ds_v5"},"#))
        #expect(known.isValid && known.warnings.isEmpty, "\(known.diagnostics)")
        let unknown = TemplateLoader.load(text: linuxTemplate(properties: #""vmProfile": {"vmSize": "Standard_D4ds_v9"},"#))
        #expect(unknown.isValid)
        #expect(unknown.warnings.map(\.path.description) == ["properties.vmProfile.vmSize"])
    }

    @Test("the complete published table: sizes beyond the D, E, F and B families the first list held")
    func publishedSizes() throws {
        #expect(AzureVMSize.named("Standard_D4d_v4") == AzureVMSize(name: "Standard_D4d_v4", vCPUs: 4, memoryMiB: 16384))
        #expect(AzureVMSize.named("standard_nc6s_v3") == AzureVMSize(name: "Standard_NC6s_v3", vCPUs: 6, memoryMiB: 114_688))
        #expect(AzureVMSize.named("Standard_L8s_v3") == AzureVMSize(name: "Standard_L8s_v3", vCPUs: 8, memoryMiB: 65536))
        for size in ["Standard_D4d_v4", "Standard_NC6s_v3", "Standard_L8s_v3"] {
            let known = TemplateLoader.load(text: linuxTemplate(properties: "\"vmProfile\": {\"vmSize\": \"\(size)\"},"))
            #expect(known.isValid && known.warnings.isEmpty, "\(size): \(known.diagnostics)")
        }
    }

    @Test("v6 generation and Lsv4 sizes from Microsoft's size pages")
    func sizePages() {
        #expect(AzureVMSize.named("Standard_D4ds_v6") == AzureVMSize(name: "Standard_D4ds_v6", vCPUs: 4, memoryMiB: 16384))
        #expect(AzureVMSize.named("standard_d2as_v6") == AzureVMSize(name: "Standard_D2as_v6", vCPUs: 2, memoryMiB: 8192))
        #expect(AzureVMSize.named("Standard_E96as_v6")?.memoryMiB == 672 * 1024)
        #expect(AzureVMSize.named("Standard_E192is_v6") == AzureVMSize(name: "Standard_E192is_v6", vCPUs: 192, memoryMiB: 1832 * 1024))
        #expect(AzureVMSize.named("Standard_F8als_v6") == AzureVMSize(name: "Standard_F8als_v6", vCPUs: 8, memoryMiB: 16384))
        #expect(AzureVMSize.named("Standard_L80s_v4") == AzureVMSize(name: "Standard_L80s_v4", vCPUs: 80, memoryMiB: 640 * 1024))
        #expect(AzureVMSize.named("Standard_L12aos_v4")?.vCPUs == 12)
        let known = TemplateLoader.load(text: linuxTemplate(properties: #""vmProfile": {"vmSize": "Standard_D2ps_v6"},"#))
        #expect(known.isValid && known.warnings.isEmpty, "\(known.diagnostics)")
    }
}
