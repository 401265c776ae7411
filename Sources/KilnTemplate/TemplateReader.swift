import KilnSupport

/// Turns one imageTemplates resource (a JSON object) into an `ImageTemplate`, applying AIB's defaults and
/// reporting every problem with its path.
final class TemplateReader {
    let sink: DiagnosticSink
    let fallbackName: String
    /// The JSON path of each customizer and in-VM validation that was read, by model index (a step that failed to
    /// read leaves a gap in the model, not in the file).
    private(set) var stepPaths = StepPaths()

    init(sink: DiagnosticSink, fallbackName: String) {
        self.sink = sink
        self.fallbackName = fallbackName
    }

    func read(_ node: JSONNode, at base: TemplatePath) -> ImageTemplate? {
        guard let root = ObjectReader(node, at: base, sink: sink, expected: "an image template object") else { return nil }

        readType(root, plain: base == .root)
        let apiVersion = readAPIVersion(root)
        if let apiVersion, apiVersion >= .v2024_02_01 { sink.exactCaseAPIVersion = apiVersion }
        defer { sink.exactCaseAPIVersion = nil }
        let name = root.string("name") ?? fallbackName
        let location = root.string("location", required: true, expected: "an Azure region name such as \"westus2\"")
        if let location, location.hasPrefix("<") {
            sink.error(root.path("location"), "expected an Azure region name, found the placeholder \"\(location)\"", at: root.value("location"))
        }
        let tags = root.stringMap("tags")
        let identity = readIdentity(root, apiVersion: apiVersion)
        let dependsOn = root.stringArray("dependsOn") ?? []
        let properties = root.object("properties", required: true).flatMap { readProperties($0, apiVersion: apiVersion) }
        root.reportUnknown()

        guard let properties, let location, let apiVersion else { return nil }
        return ImageTemplate(name: name, apiVersion: apiVersion, location: location, tags: tags, identity: identity,
                             dependsOn: dependsOn, properties: properties)
    }

    /// The body Microsoft's quickstarts send with `az resource create --resource-type
    /// Microsoft.VirtualMachineImages/imageTemplates --properties @file.json` says `"type": "Microsoft.VirtualMachineImages"`
    /// or has no type (the command line names the type). A plain file that is otherwise an image template is read as
    /// one, with a notice; inside a deployment template the type is what selected the resource.
    private func readType(_ root: ObjectReader, plain: Bool) {
        let canonical = "\"\(ImageTemplate.resourceType)\""
        let looksLikeImageTemplate = root.node.member("properties")?.value.member("source") != nil
        guard let node = root.value("type") else {
            if plain && looksLikeImageTemplate {
                sink.warning(root.path("type"), "no resource type: read as \(ImageTemplate.resourceType), as `az resource create --resource-type \(ImageTemplate.resourceType)` sends such a body")
            } else {
                root.missing("type", canonical)
            }
            return
        }
        guard let type = root.string("type", expected: canonical) else { return }
        if type.caseInsensitiveEquals(ImageTemplate.resourceType) { return }
        if plain && looksLikeImageTemplate && type.caseInsensitiveEquals("Microsoft.VirtualMachineImages") {
            sink.warning(root.path("type"), "\"\(type)\" read as \(ImageTemplate.resourceType): Microsoft's quickstarts send this body with `az resource create --resource-type \(ImageTemplate.resourceType)`, which names the type itself", at: node)
            return
        }
        sink.error(root.path("type"), "expected \(canonical), found \"\(type)\"", at: node)
    }

    /// A known version; 2019-05-01-preview (retired, still in older samples) with its own rules; a later, unknown
    /// version with the newest rules and a warning. The specifications:
    /// https://github.com/Azure/azure-rest-api-specs/tree/main/specification/imagebuilder/resource-manager/Microsoft.VirtualMachineImages
    private func readAPIVersion(_ root: ObjectReader) -> APIVersion? {
        let known = APIVersion.allCases.map(\.rawValue).joined(separator: ", ")
        guard let text = root.string("apiVersion", required: true, expected: "an API version (\(known))") else { return nil }
        let newest = APIVersion.newest
        if let version = APIVersion(rawValue: text) {
            if version == .v2019_05_01_preview {
                sink.warning(root.path("apiVersion"), "2019-05-01-preview is a retired preview; Kiln applies its rules (identity optional; every later feature warns as newer than the apiVersion)")
            }
            return version
        }
        if APIVersion.isDate(text), text > newest.rawValue {
            sink.warning(root.path("apiVersion"), "\"\(text)\" is newer than the API versions Kiln knows; Kiln applies the rules of the newest, \(newest.rawValue)", at: root.value("apiVersion"))
            return newest
        }
        sink.error(root.path("apiVersion"), "expected one of the API versions \(known), or a later one, found \"\(text)\"", at: root.value("apiVersion"))
        return nil
    }

    /// The service requires a user-assigned identity from apiVersion 2020-02-14 on (it downloads and distributes
    /// with it; https://learn.microsoft.com/azure/virtual-machines/linux/image-builder-json#identity). A local build
    /// uses the host's access instead, but a template without one would be refused by Azure. With an unknown
    /// apiVersion the newest rules apply, so the missing identity is reported after the version's own error.
    private func readIdentity(_ root: ObjectReader, apiVersion: APIVersion?) -> Identity? {
        guard let identity = root.object("identity") else {
            if apiVersion != .v2019_05_01_preview {
                sink.error(root.path("identity"), "expected an identity with one user-assigned identity (Azure Image Builder's rule from apiVersion 2020-02-14 on; a local build does not use it), found nothing")
            }
            return nil
        }
        let type = identity.choice("type", ["UserAssigned", "None"])
        let ids = identity.keys("userAssignedIdentities") ?? []
        if ids.count > 1 {
            sink.error(identity.path("userAssignedIdentities"),
                       "expected at most one user-assigned identity, found \(ids.count)", at: identity.value("userAssignedIdentities"))
        }
        for id in ids {
            if let problem = ResourceIDShape.userAssignedIdentity.problem(with: id) {
                sink.error(identity.path("userAssignedIdentities"), problem, at: identity.value("userAssignedIdentities"))
            }
        }
        if type == "UserAssigned" && ids.isEmpty {
            sink.error(identity.path("userAssignedIdentities"), "expected one user-assigned identity for type UserAssigned, found none")
        }
        identity.reportUnknown()
        return Identity(type: type, userAssignedIdentities: ids)
    }

    private func readProperties(_ props: ObjectReader, apiVersion: APIVersion?) -> ImageTemplateProperties? {
        var timeout = ImageTemplateProperties.defaultBuildTimeoutInMinutes
        if let minutes = props.int("buildTimeoutInMinutes") {
            let maximum = ImageTemplateProperties.maximumBuildTimeoutInMinutes
            if minutes < 0 || minutes > maximum {
                sink.error(props.path("buildTimeoutInMinutes"),
                           "expected minutes from 0 to \(maximum) (0 means \(ImageTemplateProperties.defaultBuildTimeoutInMinutes)), found \(minutes)",
                           at: props.value("buildTimeoutInMinutes"))
            } else if minutes > 0 {
                timeout = minutes
                if minutes < 6 {
                    sink.warning(props.path("buildTimeoutInMinutes"), "Azure rejects build timeouts under 6 minutes; Kiln uses \(minutes)")
                }
            }
        }
        let vmProfile = readVMProfile(props)
        let source = readSource(props)
        let customizeRead = readCustomizers(props, key: "customize", allowed: CustomizerKind.allCases)
        stepPaths.customize = customizeRead.map(\.path)
        let customize = customizeRead.map(\.step)
        let validate = readValidate(props, apiVersion: apiVersion)
        let distribute = readDistribute(props, apiVersion: apiVersion)
        let errorHandling = readErrorHandling(props, apiVersion: apiVersion)

        var optimize: Optimize?
        if let opt = props.object("optimize") {
            requireAPIVersion(apiVersion, .v2023_07_01, for: opt.path)
            if let vmBoot = opt.object("vmBoot") {
                let state = vmBoot.choice("state", ["Enabled", "Disabled"])
                optimize = Optimize(vmBootEnabled: state == "Enabled")
                vmBoot.reportUnknown()
            }
            opt.reportUnknown()
            sink.warning(opt.path, "accepted; boot optimization is an Azure service feature and does nothing locally")
        }
        let staging = props.string("stagingResourceGroup")
        if let staging {
            requireAPIVersion(apiVersion, .v2022_02_14, for: props.path("stagingResourceGroup"))
            if ResourceID(staging + "/providers/x/y/z") == nil && !staging.lowercased().hasPrefix("/subscriptions/") {
                sink.error(props.path("stagingResourceGroup"),
                           "expected /subscriptions/<subscriptionId>/resourceGroups/<resourceGroup>, found \"\(staging)\"", at: props.value("stagingResourceGroup"))
            }
            sink.warning(props.path("stagingResourceGroup"), "accepted; a local build stages in its run directory")
        }
        var autoRun: AutoRun?
        if let run = props.object("autoRun") {
            requireAPIVersion(apiVersion, .v2024_02_01, for: run.path)
            autoRun = AutoRun(enabled: run.choice("state", ["Enabled", "Disabled"]) == "Enabled")
            run.reportUnknown()
        }
        let managedResourceTags = props.stringMap("managedResourceTags")
        if !managedResourceTags.isEmpty { requireAPIVersion(apiVersion, .v2024_02_01, for: props.path("managedResourceTags")) }
        for key in ["provisioningState", "provisioningError", "lastRunStatus", "exactStagingResourceGroup"] where props.has(key) {
            sink.warning(props.path(key), "read-only property set by Azure; ignored")
        }
        props.reportUnknown()

        guard let source, let distribute else { return nil }
        return ImageTemplateProperties(buildTimeoutInMinutes: timeout, vmProfile: vmProfile, source: source,
                                       customize: customize, validate: validate, distribute: distribute,
                                       errorHandling: errorHandling, optimize: optimize, stagingResourceGroup: staging,
                                       autoRun: autoRun, managedResourceTags: managedResourceTags)
    }

    /// Newer properties in an older apiVersion: Azure would reject them; a local build can still honour them.
    private func requireAPIVersion(_ actual: APIVersion?, _ minimum: APIVersion, for path: TemplatePath) {
        guard let actual, actual < minimum else { return }
        sink.warning(path, "needs apiVersion \(minimum.rawValue) or later in Azure, found \(actual.rawValue); Kiln honours it")
    }

    private func readVMProfile(_ props: ObjectReader) -> VMProfile {
        var profile = VMProfile()
        guard let vm = props.object("vmProfile") else { return profile }
        // An empty vmSize means the default, as the API specification says.
        if let size = vm.string("vmSize", allowEmpty: true), !size.isEmpty { profile.vmSize = size }
        if let disk = vm.int("osDiskSizeGB") {
            if disk < 0 {
                sink.error(vm.path("osDiskSizeGB"), "expected 0 (the source's size) or more gigabytes, found \(disk)", at: vm.value("osDiskSizeGB"))
            } else {
                profile.osDiskSizeGB = disk
            }
        }
        if let vnet = vm.object("vnetConfig") {
            var config = VNetConfig()
            for key in ["subnetId", "containerInstanceSubnetId"] {
                guard let id = vnet.string(key) else { continue }
                if let problem = ResourceIDShape.subnet.problem(with: id) {
                    sink.error(vnet.path(key), problem, at: vnet.value(key))
                }
                if key == "subnetId" { config.subnetId = id } else { config.containerInstanceSubnetId = id }
            }
            config.proxyVmSize = vnet.string("proxyVmSize")
            vnet.reportUnknown()
            profile.vnetConfig = config
            sink.warning(vnet.path, "accepted; a local build VM uses user-mode networking, not an Azure virtual network")
        }
        if let ids = vm.stringArray("userAssignedIdentities", expected: "an array of user-assigned identity resource IDs") {
            for (index, id) in ids.enumerated() {
                if let problem = ResourceIDShape.userAssignedIdentity.problem(with: id) {
                    sink.error(vm.path("userAssignedIdentities").appending(index: index), problem)
                }
            }
            profile.userAssignedIdentities = ids
            if !ids.isEmpty {
                sink.warning(vm.path("userAssignedIdentities"), "accepted; identities are not attached to a local build VM")
            }
        }
        vm.reportUnknown()
        return profile
    }

    private func readSource(_ props: ObjectReader) -> ImageSource? {
        guard let source = props.object("source", required: true, expected: "a source object with a type") else { return nil }
        defer { source.reportUnknown() }
        let types = ["PlatformImage", "ManagedImage", "SharedImageVersion"]
        guard let type = source.choice("type", types, required: true) else { return nil }
        switch type {
        case "PlatformImage":
            let publisher = source.string("publisher", required: true, expected: "an image publisher such as \"Canonical\"")
            let offer = source.string("offer", required: true, expected: "an image offer such as \"0001-com-ubuntu-server-jammy\"")
            let sku = source.string("sku", required: true, expected: "an image SKU such as \"22_04-lts\"")
            let version = source.string("version", required: true, expected: "an image version or \"latest\"")
            var plan: PlanInfo?
            if let info = source.object("planInfo") {
                let name = info.string("planName", required: true)
                let product = info.string("planProduct", required: true)
                let planPublisher = info.string("planPublisher", required: true)
                info.reportUnknown()
                if let name, let product, let planPublisher {
                    plan = PlanInfo(planName: name, planProduct: product, planPublisher: planPublisher)
                }
            }
            _ = source.value("exactVersion")
            guard let publisher, let offer, let sku, let version else { return nil }
            return .platformImage(PlatformImage(publisher: publisher, offer: offer, sku: sku, version: version, planInfo: plan))
        case "ManagedImage":
            guard let id = source.string("imageId", required: true, expected: "a managed image resource ID") else { return nil }
            if let problem = ResourceIDShape.managedImage.problem(with: id) {
                sink.error(source.path("imageId"), problem, at: source.value("imageId"))
                return nil
            }
            return .managedImage(imageId: id)
        default:
            guard let id = source.string("imageVersionId", required: true, expected: "a gallery image version resource ID") else { return nil }
            _ = source.value("exactVersion")
            if let problem = ResourceIDShape.galleryImageVersion.problem(with: id) {
                sink.error(source.path("imageVersionId"), problem, at: source.value("imageVersionId"))
                return nil
            }
            return .sharedImageVersion(imageVersionId: id)
        }
    }

    enum CustomizerKind: String, CaseIterable {
        case shell = "Shell", powerShell = "PowerShell", file = "File"
        case windowsRestart = "WindowsRestart", windowsUpdate = "WindowsUpdate"
    }

    private func readCustomizers(_ parent: ObjectReader, key: String, allowed: [CustomizerKind]) -> [(path: TemplatePath, step: Customizer)] {
        guard let items = parent.array(key, expected: "an array of customizers") else { return [] }
        var steps: [(path: TemplatePath, step: Customizer)] = []
        var namesSeen: [String: Int] = [:]
        for (index, item) in items.enumerated() {
            let path = parent.path(key).appending(index: index)
            guard let step = ObjectReader(item, at: path, sink: sink, expected: "a customizer object") else { continue }
            // A name is optional and may be empty; a repeated one is accepted, as the service accepts it (its own
            // Windows REST example, CreateImageTemplateWindows.json in azure-rest-api-specs, repeats one). Build logs
            // then show the step by place and type (LoadedTemplate.stepLabels).
            if let name = step.string("name", allowEmpty: true), !name.isEmpty {
                if let first = namesSeen[name.lowercased()] {
                    sink.warning(step.path("name"), "\"\(name)\" is also the name of \(parent.path(key))[\(first)]; accepted, and build logs show this step as \(key)[\(index)]", at: step.value("name"))
                } else {
                    namesSeen[name.lowercased()] = index
                }
            }
            if let customizer = readCustomizer(step, allowed: allowed) { steps.append((path, customizer)) }
            step.reportUnknown()
        }
        return steps
    }

    private func readCustomizer(_ step: ObjectReader, allowed: [CustomizerKind]) -> Customizer? {
        guard let typeText = step.string("type", required: true, expected: "a customizer type (\(allowed.map(\.rawValue).joined(separator: ", ")))") else { return nil }
        guard let kind = allowed.first(where: { $0.rawValue.caseInsensitiveEquals(typeText) }) else {
            let known = CustomizerKind.allCases.contains { $0.rawValue.caseInsensitiveEquals(typeText) }
            let list = allowed.map(\.rawValue).joined(separator: ", ")
            sink.error(step.path("type"), known ? "expected one of \(list) here, found \"\(typeText)\"" : "expected a customizer type (\(list)), found \"\(typeText)\"", at: step.value("type"))
            return nil
        }
        sink.caseMismatch(step.path("type"), written: typeText, canonical: kind.rawValue, what: "values")
        let name = step.value("name")?.stringValue
        switch kind {
        case .shell:
            guard let script = readScript(step) else { return nil }
            return .shell(ShellCustomizer(name: name, script: script, sha256Checksum: readChecksum(step, script: script)))
        case .powerShell:
            let script = readScript(step)
            let checksum = script.flatMap { readChecksum(step, script: $0) }
            let elevated = step.bool("runElevated") ?? false
            let system = step.bool("runAsSystem") ?? false
            if system && !elevated {
                sink.error(step.path("runAsSystem"), "expected runElevated: true alongside runAsSystem: true, found runElevated \(step.has("runElevated") ? "false" : "not set")", at: step.value("runAsSystem"))
            }
            var codes = [0]
            if let items = step.array("validExitCodes", expected: "an array of integer exit codes") {
                codes = items.enumerated().compactMap { index, item in
                    ObjectReader.integer(item, at: step.path("validExitCodes").appending(index: index), sink: sink, expected: "an integer exit code")
                }
                if items.isEmpty { codes = [0] }
            }
            guard let script else { return nil }
            return .powerShell(PowerShellCustomizer(name: name, script: script, sha256Checksum: checksum, runElevated: elevated,
                                                    runAsSystem: system, validExitCodes: codes))
        case .file:
            let source = step.string("sourceUri", required: true, expected: "an http, https or file URI")
            if let source { checkURI(source, at: step.path("sourceUri"), node: step.value("sourceUri")) }
            let destination = step.string("destination", required: true, expected: "a path in the guest")
            let checksum = readChecksumValue(step)
            guard let source, let destination else { return nil }
            return .file(FileCustomizer(name: name, sourceUri: source, destination: destination, sha256Checksum: checksum))
        case .windowsRestart:
            let command = step.string("restartCommand") ?? WindowsRestartCustomizer.defaultRestartCommand
            let check = step.string("restartCheckCommand")
            let timeoutText = step.string("restartTimeout") ?? WindowsRestartCustomizer.defaultRestartTimeout
            guard let timeout = DurationText.parse(timeoutText), timeout > .zero else {
                sink.error(step.path("restartTimeout"), "expected a duration such as \"5m\", \"90s\" or \"2h\" (a number with unit s, m or h), found \"\(timeoutText)\"", at: step.value("restartTimeout"))
                return nil
            }
            return .windowsRestart(WindowsRestartCustomizer(name: name, restartCommand: command, restartCheckCommand: check,
                                                            restartTimeout: timeoutText, restartTimeoutDuration: timeout))
        case .windowsUpdate:
            // Empty criteria and an updateLimit of 0 mean the defaults, as the API specification says.
            var criteria = step.string("searchCriteria", allowEmpty: true) ?? ""
            if criteria.trimmingSpaces.isEmpty { criteria = WindowsUpdateCustomizer.defaultSearchCriteria }
            var filters = WindowsUpdateCustomizer.defaultFilters
            if let given = step.stringArray("filters") {
                for (index, filter) in given.enumerated() {
                    checkUpdateFilter(filter, at: step.path("filters").appending(index: index))
                }
                if !given.isEmpty { filters = given }
            }
            var limit = WindowsUpdateCustomizer.defaultUpdateLimit
            if let value = step.int("updateLimit", expected: "an integer of 0 (the default, \(limit)) or more") {
                if value < 0 {
                    sink.error(step.path("updateLimit"), "expected a positive integer (or 0 for the default, \(limit)), found \(value)", at: step.value("updateLimit"))
                } else if value > 0 {
                    limit = value
                }
            }
            return .windowsUpdate(WindowsUpdateCustomizer(name: name, searchCriteria: criteria, filters: filters, updateLimit: limit))
        }
    }

    /// rgl/packer-plugin-windows-update's windows-update.ps1 (what AIB runs) splits each filter at its first ':'
    /// into an action and a PowerShell expression, includes an update on the first filter that matches when its
    /// action is `include`, and skips it otherwise. A filter without ':' (`$_.BrowseOnly`) has the whole text as
    /// its action and an empty expression, so it matches nothing; an unknown action excludes what it matches.
    /// Kiln's Windows Update step does the same (WindowsScripts.windowsUpdate); validate says so.
    private func checkUpdateFilter(_ filter: String, at path: TemplatePath) {
        guard let colon = filter.firstIndex(of: ":") else {
            sink.warning(path, "\"\(filter)\" has no include: or exclude: action; the Windows Update step (as rgl/packer-plugin-windows-update) treats it as matching no update. Write \"include:\(filter)\" to select updates with it")
            return
        }
        let action = filter[..<colon].trimmingCharacters().lowercased()
        let expression = filter[filter.index(after: colon)...].trimmingCharacters()
        if action != "include" && action != "exclude" {
            sink.warning(path, "\"\(filter)\": the action \"\(action)\" is neither include nor exclude; an update the expression matches is skipped, as rgl/packer-plugin-windows-update does")
        } else if expression.isEmpty {
            sink.warning(path, "\"\(filter)\" has an empty expression, which matches no update")
        }
    }

    /// Exactly one of scriptUri and inline.
    private func readScript(_ step: ObjectReader) -> ScriptSource? {
        let hasURI = step.has("scriptUri")
        let hasInline = step.has("inline")
        if hasURI == hasInline {
            sink.error(step.path, hasURI ? "expected exactly one of scriptUri and inline, found both"
                                         : "expected exactly one of scriptUri and inline, found neither", at: step.node)
            return nil
        }
        if hasURI {
            guard let uri = step.string("scriptUri", expected: "an http, https or file URI") else { return nil }
            checkURI(uri, at: step.path("scriptUri"), node: step.value("scriptUri"))
            return .scriptUri(uri)
        }
        guard let node = step.value("inline") else { return nil }
        switch node.value {
        case .string(let line):
            return .inline([line])
        case .array:
            guard let lines = step.stringArray("inline", expected: "a string or an array of strings") else { return nil }
            if lines.isEmpty {
                sink.error(step.path("inline"), "expected at least one command, found an empty array", at: node)
            }
            return .inline(lines)
        default:
            sink.error(step.path("inline"), "expected a string or an array of strings, found \(node.summary)", at: node)
            return nil
        }
    }

    private func readChecksum(_ step: ObjectReader, script: ScriptSource) -> String? {
        let checksum = readChecksumValue(step)
        if checksum != nil, case .inline = script {
            sink.warning(step.path("sha256Checksum"), "applies to scriptUri; ignored for inline commands")
        }
        return checksum
    }

    private func readChecksumValue(_ step: ObjectReader) -> String? {
        // An empty checksum means "no checksum", as the API specification's default is "".
        guard let sum = step.string("sha256Checksum", allowEmpty: true, expected: "64 hexadecimal digits"), !sum.isEmpty else { return nil }
        guard sum.count == 64, sum.allSatisfy(\.isHexDigit), sum.allSatisfy(\.isASCII) else {
            sink.error(step.path("sha256Checksum"), "expected 64 hexadecimal digits, found \"\(sum)\" (\(sum.count) characters)", at: step.value("sha256Checksum"))
            return nil
        }
        return sum.lowercased()
    }

    private func checkURI(_ uri: String, at path: TemplatePath, node: JSONNode?) {
        let lower = uri.lowercased()
        let schemeOK = ["https://", "http://", "file://"].contains { lower.hasPrefix($0) && lower.count > $0.count }
        if !schemeOK {
            sink.error(path, "expected an http, https or file URI, found \"\(uri)\"", at: node)
        } else if uri.contains("<") && uri.contains(">") {
            sink.warning(path, "looks like an unreplaced placeholder: \"\(uri)\"")
        }
    }

    private func readValidate(_ props: ObjectReader, apiVersion: APIVersion?) -> ValidationProfile? {
        guard let validate = props.object("validate") else { return nil }
        requireAPIVersion(apiVersion, .v2022_02_14, for: validate.path)
        let validations = readCustomizers(validate, key: "inVMValidations", allowed: [.shell, .powerShell, .file])
        stepPaths.inVMValidations = validations.map(\.path)
        let profile = ValidationProfile(
            continueDistributeOnFailure: validate.bool("continueDistributeOnFailure") ?? false,
            sourceValidationOnly: validate.bool("sourceValidationOnly") ?? false,
            inVMValidations: validations.map(\.step))
        validate.reportUnknown()
        return profile
    }

    private func readErrorHandling(_ props: ObjectReader, apiVersion: APIVersion?) -> ErrorHandling {
        var handling = ErrorHandling()
        guard let object = props.object("errorHandling") else { return handling }
        requireAPIVersion(apiVersion, .v2023_07_01, for: object.path)
        let actions = ErrorAction.allCases.map(\.rawValue)
        if let text = object.choice("onCustomizerError", actions), let action = ErrorAction(rawValue: text) {
            handling.onCustomizerError = action
        }
        if let text = object.choice("onValidationError", actions), let action = ErrorAction(rawValue: text) {
            handling.onValidationError = action
        }
        object.reportUnknown()
        return handling
    }

    private func readDistribute(_ props: ObjectReader, apiVersion: APIVersion?) -> [Distributor]? {
        guard let items = props.array("distribute", required: true, expected: "an array of at least one distribution target") else { return nil }
        if items.isEmpty {
            sink.error(props.path("distribute"), "expected at least one distribution target (ManagedImage, SharedImage or VHD), found an empty array", at: props.value("distribute"))
            return nil
        }
        var targets: [Distributor] = []
        var outputNames: [String: Int] = [:]
        for (index, item) in items.enumerated() {
            let path = props.path("distribute").appending(index: index)
            guard let target = ObjectReader(item, at: path, sink: sink, expected: "a distribution target object") else { continue }
            defer { target.reportUnknown() }
            let runOutputName = target.string("runOutputName", required: true, allowEmpty: true, expected: "a name matching ^[A-Za-z0-9-_.]{1,64}$")
            if let runOutputName {
                if let problem = RunOutputName.problem(with: runOutputName) {
                    sink.error(target.path("runOutputName"), problem, at: target.value("runOutputName"))
                } else if let first = outputNames[runOutputName.lowercased()] {
                    sink.error(target.path("runOutputName"), "expected a unique runOutputName, found \"\(runOutputName)\" (already used by properties.distribute[\(first)])", at: target.value("runOutputName"))
                } else {
                    outputNames[runOutputName.lowercased()] = index
                }
            }
            let tags = target.stringMap("artifactTags")
            guard let type = target.choice("type", ["ManagedImage", "SharedImage", "VHD"], required: true) else { continue }
            let kind: Distributor.Target?
            switch type {
            case "ManagedImage":
                let imageId = target.string("imageId", required: true, expected: "a managed image resource ID")
                if let imageId, let problem = ResourceIDShape.managedImage.problem(with: imageId) {
                    sink.error(target.path("imageId"), problem, at: target.value("imageId"))
                }
                let location = target.string("location", required: true, expected: "an Azure region name")
                kind = imageId.flatMap { id in location.map { .managedImage(ManagedImageDistributor(imageId: id, location: $0)) } }
            case "SharedImage":
                kind = readSharedImage(target, apiVersion: apiVersion).map { .sharedImage($0) }
            default:
                let uri = target.string("uri", expected: "a destination path or URI")
                if let uri {
                    let lower = uri.lowercased()
                    if lower.hasPrefix("https://") || lower.hasPrefix("http://") {
                        sink.warning(target.path("uri"), "a storage URL cannot be written locally; Kiln writes the VHD to the run directory and records this URI")
                    } else if !(lower.hasPrefix("file://") || uri.hasPrefix("/")) {
                        sink.error(target.path("uri"), "expected an absolute path, a file:// URI or a blob URL, found \"\(uri)\"", at: target.value("uri"))
                    }
                }
                kind = .vhd(VHDDistributor(uri: uri))
            }
            if let runOutputName, let kind {
                targets.append(Distributor(runOutputName: runOutputName, artifactTags: tags, target: kind))
            }
        }
        return targets
    }

    private func readSharedImage(_ target: ObjectReader, apiVersion: APIVersion?) -> SharedImageDistributor? {
        let id = target.string("galleryImageId", required: true, expected: "a gallery image resource ID")
        if let id, let problem = ResourceIDShape.galleryImage.problem(with: id) {
            sink.error(target.path("galleryImageId"), problem, at: target.value("galleryImageId"))
        }
        let replicationRegions = target.stringArray("replicationRegions") ?? []
        if target.has("replicationRegions") && target.has("targetRegions") {
            sink.error(target.path, "expected either replicationRegions or targetRegions, found both", at: target.node)
        } else if !target.has("replicationRegions") && !target.has("targetRegions"), let apiVersion, apiVersion < .v2022_07_01 {
            sink.error(target.path("replicationRegions"), "expected an array of regions (required before apiVersion 2022-07-01, which added targetRegions), found nothing")
        }
        let storageTypes = SharedImageDistributor.storageAccountTypes
        var regions: [TargetRegion] = []
        if let items = target.array("targetRegions", expected: "an array of target regions") {
            for (index, item) in items.enumerated() {
                guard let region = ObjectReader(item, at: target.path("targetRegions").appending(index: index), sink: sink,
                                                expected: "a target region object") else { continue }
                let name = region.string("name", required: true, expected: "an Azure region name")
                var replicas = 1
                if let count = region.int("replicaCount", expected: "an integer from 1 to 100") {
                    if (1...100).contains(count) { replicas = count } else {
                        sink.error(region.path("replicaCount"), "expected an integer from 1 to 100, found \(count)", at: region.value("replicaCount"))
                    }
                }
                let storage = region.choice("storageAccountType", storageTypes)
                region.reportUnknown()
                if let name { regions.append(TargetRegion(name: name, replicaCount: replicas, storageAccountType: storage)) }
            }
        }
        let storage = target.choice("storageAccountType", storageTypes)
        let exclude = target.bool("excludeFromLatest") ?? false
        var versioning: VersioningScheme?
        if let object = target.object("versioning") {
            switch object.choice("scheme", ["Latest", "Source"], required: true) {
            case "Latest":
                var major: Int?
                if let value = object.int("major", expected: "an integer of -1 or more") {
                    if value < -1 {
                        sink.error(object.path("major"), "expected an integer of -1 (any major) or more, found \(value)", at: object.value("major"))
                    } else if value >= 0 {
                        major = value
                    }
                }
                versioning = .latest(major: major)
            case "Source":
                if object.has("major") {
                    sink.error(object.path("major"), "expected no major with scheme Source, found one")
                }
                versioning = .source
            default: break
            }
            object.reportUnknown()
            if let id, let parsed = ResourceID(id), parsed.segments.count == 3 {
                sink.warning(object.path, "the galleryImageId names an explicit version, so versioning is not used")
            }
        }
        guard let id else { return nil }
        return SharedImageDistributor(galleryImageId: id, replicationRegions: replicationRegions, targetRegions: regions,
                                      excludeFromLatest: exclude, storageAccountType: storage, versioning: versioning)
    }
}

/// runOutputName becomes a file name in the run directory: AIB's pattern, and never "." or "..".
public enum RunOutputName {
    public static func problem(with name: String) -> String? {
        let allowed = name.unicodeScalars.allSatisfy {
            ("A"..."Z").contains($0) || ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "-" || $0 == "_" || $0 == "."
        }
        if !allowed || name.isEmpty || name.count > 64 {
            return "expected a name matching ^[A-Za-z0-9-_.]{1,64}$, found \"\(name)\"\(name.count > 64 ? " (\(name.count) characters)" : "")"
        }
        if name == "." || name == ".." {
            return "expected a name that is not \".\" or \"..\" (it becomes a file name), found \"\(name)\""
        }
        return nil
    }
}

extension Substring {
    func trimmingCharacters() -> Substring {
        String(self).trimmingSpaces
    }
}
