/// The effective template as AIB-shaped JSON, every default spelled out: what `kiln validate --print` shows.
extension ImageTemplate {
    public var effectiveJSON: JSONNode {
        var root: [JSONMember] = [
            .init("type", .string(ImageTemplate.resourceType)),
            .init("apiVersion", .string(apiVersion.rawValue)),
            .init("name", .string(name)),
            .init("location", .string(location)),
        ]
        if !tags.isEmpty { root.append(.init("tags", tags.json)) }
        if let identity {
            var members: [JSONMember] = []
            if let type = identity.type { members.append(.init("type", .string(type))) }
            members.append(.init("userAssignedIdentities", .object(identity.userAssignedIdentities.map { .init($0, .object([])) })))
            root.append(.init("identity", .object(members)))
        }
        if !dependsOn.isEmpty { root.append(.init("dependsOn", .array(dependsOn.map { JSONNode(.string($0)) }))) }
        root.append(.init("properties", properties.json))
        return JSONNode(.object(root))
    }
}

extension JSONMember {
    init(_ key: String, _ value: JSONValue) {
        self.init(key: key, value: JSONNode(value))
    }
}

private extension Array where Element == KeyValue {
    var json: JSONValue { .object(map { JSONMember($0.key, .string($0.value)) }) }
}

private func int(_ value: Int) -> JSONValue { .number(String(value)) }
private func strings(_ values: [String]) -> JSONValue { .array(values.map { JSONNode(.string($0)) }) }

extension ImageTemplateProperties {
    var json: JSONValue {
        var members: [JSONMember] = [.init("buildTimeoutInMinutes", int(buildTimeoutInMinutes))]
        var vm: [JSONMember] = [.init("vmSize", .string(vmProfile.vmSize)), .init("osDiskSizeGB", int(vmProfile.osDiskSizeGB))]
        if let vnet = vmProfile.vnetConfig {
            var config: [JSONMember] = []
            if let id = vnet.subnetId { config.append(.init("subnetId", .string(id))) }
            if let id = vnet.containerInstanceSubnetId { config.append(.init("containerInstanceSubnetId", .string(id))) }
            if let size = vnet.proxyVmSize { config.append(.init("proxyVmSize", .string(size))) }
            vm.append(.init("vnetConfig", .object(config)))
        }
        if !vmProfile.userAssignedIdentities.isEmpty { vm.append(.init("userAssignedIdentities", strings(vmProfile.userAssignedIdentities))) }
        members.append(.init("vmProfile", .object(vm)))
        members.append(.init("source", source.json))
        members.append(.init("customize", .array(customize.map { JSONNode($0.json) })))
        if let validate {
            members.append(.init("validate", .object([
                .init("continueDistributeOnFailure", .bool(validate.continueDistributeOnFailure)),
                .init("sourceValidationOnly", .bool(validate.sourceValidationOnly)),
                .init("inVMValidations", .array(validate.inVMValidations.map { JSONNode($0.json) })),
            ])))
        }
        members.append(.init("distribute", .array(distribute.map { JSONNode($0.json) })))
        members.append(.init("errorHandling", .object([
            .init("onCustomizerError", .string(errorHandling.onCustomizerError.rawValue)),
            .init("onValidationError", .string(errorHandling.onValidationError.rawValue)),
        ])))
        if let optimize {
            members.append(.init("optimize", .object([.init("vmBoot", .object([.init("state", .string(optimize.vmBootEnabled ? "Enabled" : "Disabled"))]))])))
        }
        if let stagingResourceGroup { members.append(.init("stagingResourceGroup", .string(stagingResourceGroup))) }
        if let autoRun { members.append(.init("autoRun", .object([.init("state", .string(autoRun.enabled ? "Enabled" : "Disabled"))]))) }
        if !managedResourceTags.isEmpty { members.append(.init("managedResourceTags", managedResourceTags.json)) }
        return .object(members)
    }
}

extension ImageSource {
    var json: JSONValue {
        switch self {
        case .platformImage(let image):
            var members: [JSONMember] = [
                .init("type", .string(typeName)), .init("publisher", .string(image.publisher)),
                .init("offer", .string(image.offer)), .init("sku", .string(image.sku)), .init("version", .string(image.version)),
            ]
            if let plan = image.planInfo {
                members.append(.init("planInfo", .object([
                    .init("planName", .string(plan.planName)), .init("planProduct", .string(plan.planProduct)),
                    .init("planPublisher", .string(plan.planPublisher)),
                ])))
            }
            return .object(members)
        case .managedImage(let id):
            return .object([.init("type", .string(typeName)), .init("imageId", .string(id))])
        case .sharedImageVersion(let id):
            return .object([.init("type", .string(typeName)), .init("imageVersionId", .string(id))])
        }
    }
}

extension Customizer {
    var json: JSONValue {
        var members: [JSONMember] = [.init("type", .string(typeName))]
        if let name { members.append(.init("name", .string(name))) }
        func script(_ source: ScriptSource, _ checksum: String?) {
            switch source {
            case .inline(let lines): members.append(.init("inline", strings(lines)))
            case .scriptUri(let uri): members.append(.init("scriptUri", .string(uri)))
            }
            if let checksum { members.append(.init("sha256Checksum", .string(checksum))) }
        }
        switch self {
        case .shell(let step):
            script(step.script, step.sha256Checksum)
        case .powerShell(let step):
            script(step.script, step.sha256Checksum)
            members.append(.init("runElevated", .bool(step.runElevated)))
            members.append(.init("runAsSystem", .bool(step.runAsSystem)))
            members.append(.init("validExitCodes", .array(step.validExitCodes.map { JSONNode(int($0)) })))
        case .file(let step):
            members.append(.init("sourceUri", .string(step.sourceUri)))
            members.append(.init("destination", .string(step.destination)))
            if let sum = step.sha256Checksum { members.append(.init("sha256Checksum", .string(sum))) }
        case .windowsRestart(let step):
            members.append(.init("restartCommand", .string(step.restartCommand)))
            if let check = step.restartCheckCommand { members.append(.init("restartCheckCommand", .string(check))) }
            members.append(.init("restartTimeout", .string(step.restartTimeout)))
        case .windowsUpdate(let step):
            members.append(.init("searchCriteria", .string(step.searchCriteria)))
            members.append(.init("filters", strings(step.filters)))
            members.append(.init("updateLimit", int(step.updateLimit)))
        }
        return .object(members)
    }
}

extension Distributor {
    var json: JSONValue {
        var members: [JSONMember] = [.init("type", .string(typeName)), .init("runOutputName", .string(runOutputName))]
        switch target {
        case .managedImage(let image):
            members.append(.init("imageId", .string(image.imageId)))
            members.append(.init("location", .string(image.location)))
        case .sharedImage(let image):
            members.append(.init("galleryImageId", .string(image.galleryImageId)))
            if !image.replicationRegions.isEmpty { members.append(.init("replicationRegions", strings(image.replicationRegions))) }
            if !image.targetRegions.isEmpty {
                members.append(.init("targetRegions", .array(image.targetRegions.map { region in
                    var fields: [JSONMember] = [.init("name", .string(region.name)), .init("replicaCount", int(region.replicaCount))]
                    if let type = region.storageAccountType { fields.append(.init("storageAccountType", .string(type))) }
                    return JSONNode(.object(fields))
                })))
            }
            members.append(.init("excludeFromLatest", .bool(image.excludeFromLatest)))
            if let type = image.storageAccountType { members.append(.init("storageAccountType", .string(type))) }
            switch image.versioning {
            case .latest(let major)?:
                var fields: [JSONMember] = [.init("scheme", .string("Latest"))]
                if let major { fields.append(.init("major", int(major))) }
                members.append(.init("versioning", .object(fields)))
            case .source?:
                members.append(.init("versioning", .object([.init("scheme", .string("Source"))])))
            case nil: break
            }
        case .vhd(let vhd):
            if let uri = vhd.uri { members.append(.init("uri", .string(uri))) }
        }
        if !artifactTags.isEmpty { members.append(.init("artifactTags", artifactTags.json)) }
        return .object(members)
    }
}
