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
        let apiVersion = readAPIVersion(root, plain: base == .root)
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
        // A GET response (or `az image builder show` output) carries the resource ID; ARM ignores it in a request body.
        if root.has("id") {
            sink.warning(root.path("id"), "read-only property set by Azure; ignored", at: root.value("id"))
        }
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
    /// A plain body without one is what `az resource create --is-full-object` and `az image builder create
    /// --image-template` send: the command line supplies the version (`--api-version`, the newest it knows, or the
    /// SDK's pinned one), so it is read with the newest rules and a notice, as a missing type is.
    private func readAPIVersion(_ root: ObjectReader, plain: Bool) -> APIVersion? {
        let known = APIVersion.allCases.map(\.rawValue).joined(separator: ", ")
        let newest = APIVersion.newest
        if plain, root.value("apiVersion") == nil, root.node.member("properties")?.value.member("source") != nil {
            sink.warning(root.path("apiVersion"), "no apiVersion: Kiln applies the rules of the newest it knows, \(newest.rawValue), as `az resource create --is-full-object` and `az image builder create` supply the version on the command line")
            return newest
        }
        guard let text = root.string("apiVersion", required: true, expected: "an API version (\(known))") else { return nil }
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
        // Empty means unset: "If this field is empty, a resource group with a random name will be created" (the API's
        // description of stagingResourceGroup, 2022-02-14 on).
        let staging = props.string("stagingResourceGroup", allowEmpty: true).flatMap { $0.trimmingSpaces.isEmpty ? nil : $0 }
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
        if let size = vm.string("vmSize", allowEmpty: true), !size.isEmpty {
            profile.vmSize = size
            if AzureVMSize.named(size) == nil {
                sink.warning(vm.path("vmSize"), "expected an Azure VM size Kiln knows, found \(AzureVMSize.unknownSizeDescription(size)); Azure may accept it, but `kiln build` cannot size a VM for it and refuses it", at: vm.value("vmSize"))
            }
        }
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
