/// Distribution targets: ManagedImage, SharedImage (regions, versioning) and VHD.
extension TemplateReader {
    func readDistribute(_ props: ObjectReader, apiVersion: APIVersion?) -> [Distributor]? {
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

    func readSharedImage(_ target: ObjectReader, apiVersion: APIVersion?) -> SharedImageDistributor? {
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
