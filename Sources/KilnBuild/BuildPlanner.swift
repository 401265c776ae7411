import Foundation
import KilnCustomizers
import KilnDistribution
import KilnMachine
import KilnStore
import KilnSupport
import KilnTemplate

/// Template → plan: picks the image template, resolves its source, checks the guest rules once the guest's OS is
/// known, sizes the VM, and lists the steps with their template paths, downloads and checkpoint keys. A build
/// plans in two stages (the keys need the accelerator and the sha256 of what the steps downloaded);
/// `kiln build --plan` stops before either and boots nothing.
public enum BuildPlanner {
    /// The one image template of `loaded` the request names.
    static func choose(_ loaded: TemplateLoadResult, request: BuildRequest) throws(KilnError) -> LoadedTemplate {
        guard loaded.isValid else {
            let lines = loaded.errors.map { "\(request.templatePath): \($0)" }
            throw KilnError(.invalidTemplate, "the template is not valid:\n" + lines.joined(separator: "\n"))
        }
        let candidates = loaded.templates.filter { request.name == nil || $0.template.name == request.name }
        guard candidates.count == 1, let chosen = candidates.first else {
            let names = loaded.templates.map(\.template.name).joined(separator: ", ")
            throw KilnError(.invalidArgument, request.name == nil ? "\(request.templatePath) holds \(loaded.templates.count) image templates (\(names)); choose one with --name"
                                                                  : "expected an image template named \(request.name ?? "") in \(request.templatePath), found \(names)")
        }
        return chosen
    }

    /// Every VHD target's local path is checked before the boot: an existing file (without --force), a symbolic link
    /// on the way or a place inside Kiln's state costs no build.
    static func checkOutputDestinations(_ template: ImageTemplate, request: BuildRequest) throws(KilnError) {
        for (index, target) in template.properties.distribute.enumerated() {
            guard case .vhd(let vhd) = target.target, let destination = Distribution.localPath(vhd.uri) else { continue }
            try OutputDestination.check(destination, field: "\(request.templatePath): properties.distribute[\(index)].uri",
                                        force: request.force, protected: OutputDestination.protectedDirectories(state: request.state))
        }
    }

    /// `properties.source` as a disk: a catalog image (built on first use when `allowBuild`), or a managed image or
    /// gallery version from the local store. `resolved` hears a gallery reference that resolved to another version.
    static func resolveSource(_ template: ImageTemplate, request: BuildRequest, store: StateStore, allowBuild: Bool,
                              progress: @escaping @Sendable (String) -> Void,
                              resolved: (_ reference: String, _ version: String) -> Void) async throws(KilnError) -> SourceImage {
        let catalog = try ImageCatalog.locate(state: request.state)
        switch template.properties.source {
        case .platformImage(let image):
            return try await catalog.resolve(publisher: image.publisher, offer: image.offer, sku: image.sku, version: image.version,
                                             allowBuild: allowBuild, progress: progress)
        case .managedImage(let id):
            guard let image = try store.managedImage(id: id) else {
                throw KilnError(.notFound, "properties.source.imageId: expected a managed image \(id) in the local store, found none (kiln image list shows the store)")
            }
            return try SourceImage(stored: image.disk, reference: image.id, version: nil, path: "properties.source.imageId")
        case .sharedImageVersion(let id):
            let version: GalleryVersionRecord
            do {
                version = try store.resolveGalleryVersion(id)
            } catch {
                throw KilnError(error.code, "properties.source.imageVersionId: \(error.message)")
            }
            if version.id.lowercased() != id.lowercased() { resolved(id, version.id) }
            return try SourceImage(stored: version.disk, reference: version.id, version: version.version.description,
                                   path: "properties.source.imageVersionId")
        }
    }

    /// The plan before the accelerator is decided and the downloads are fetched: guest, VM, steps. Throws when a
    /// step does not suit the guest's OS (the guest rules, checked here once the source is resolved).
    static func plan(_ loaded: LoadedTemplate, request: BuildRequest, source: SourceImage) throws(KilnError) -> BuildPlan {
        let template = loaded.template
        let guestOS: OSType = source.osType.flatMap { OSType(rawValue: $0) } ?? template.declaredOSType ?? .linux
        if let problem = GuestRules.check(loaded, osType: guestOS).first(where: { $0.severity == .error }) {
            throw KilnError(.invalidTemplate, "\(request.templatePath): \(problem)")
        }
        let validate = template.properties.validate
        let sourceOnly = validate?.sourceValidationOnly == true
        let labels = loaded.stepLabels
        func planned(_ index: Int, _ templatePath: TemplatePath, _ step: Customizer) -> BuildPlan.PlannedStep {
            let path = templatePath.description
            return BuildPlan.PlannedStep(index: index, path: path, label: StepRunner.label(step, index: index, path: path, labels: labels), customizer: step,
                                         downloads: StepRunner.uris(of: step).map { BuildPlan.Download(path: "\(path).\($0.property)", uri: $0.uri, sha256Checksum: $0.checksum) },
                                         checkpointKey: nil)
        }
        let customize = sourceOnly ? [] : zip(loaded.stepPaths.customize, template.properties.customize).enumerated().map { planned($0.offset, $0.element.0, $0.element.1) }
        let validations = zip(loaded.stepPaths.inVMValidations, validate?.inVMValidations ?? []).enumerated().map {
            planned(customize.count + $0.offset, $0.element.0, $0.element.1)
        }
        let size = try VMSize.named(template.properties.vmProfile.vmSize)
        var metadata: InstanceMetadata?
        if guestOS == .linux {
            // What the instance metadata service tells the guest: AIB's build VM in the template's location.
            var linux = InstanceMetadata(location: template.location, vmSize: size.name,
                                         tags: Dictionary(template.tags.map { ($0.key, $0.value) }, uniquingKeysWith: { $1 }))
            if case .platformImage(let image) = template.properties.source {
                (linux.publisher, linux.offer, linux.sku) = (image.publisher, image.offer, image.sku)
                linux.version = source.version ?? image.version
            }
            metadata = linux
        }
        var noCheckpoints: String?
        if guestOS == .windows {
            noCheckpoints = "the build cache does not cover Windows guests: no checkpoints are read or written"
        } else if !request.useCache && !request.writeCheckpoints && request.resumeRun == nil {
            noCheckpoints = "--no-cache and --no-checkpoints"
        }
        var plan = BuildPlan(templateName: template.name, templatePath: request.templatePath, source: source, guestOS: guestOS, size: size,
                             osDiskSizeGB: template.properties.vmProfile.osDiskSizeGB, accelerator: nil, username: "packer",
                             instanceMetadata: metadata, customize: customize, validations: validations, sourceValidationOnly: sourceOnly,
                             bootKey: nil, noCheckpointsReason: noCheckpoints, distribute: template.properties.distribute)
        // A remote host keeps its checkpoints' volumes in its pool: the keys are that host's.
        plan.checkpointHost = request.remote.map { "\($0.uri) pool \($0.pool)" }
        return plan
    }

    /// Completes the checkpoint keys of a Linux plan: the booted source, then each customizer on top of the one
    /// before, hashing what it downloaded. Without the downloads (`downloadedSHA256` nil, a printed plan), the
    /// chain stops at the first step that downloads something.
    static func withCheckpointKeys(_ plan: BuildPlan, accelerator: AcceleratorDecision?, downloadedSHA256: [String?]?) throws(KilnError) -> BuildPlan {
        var plan = plan
        plan.accelerator = accelerator
        guard plan.guestOS == .linux, let accelerator else { return plan }
        var parent = try CheckpointKeys.boot(source: plan.source, size: plan.size, osDiskSizeGB: plan.osDiskSizeGB,
                                             accelerator: accelerator.accelerator, username: plan.username,
                                             instanceMetadata: plan.instanceMetadata, host: plan.checkpointHost)
        plan.bootKey = parent
        for index in plan.customize.indices {
            let step = plan.customize[index]
            let sha256: String?
            if let downloadedSHA256 {
                sha256 = index < downloadedSHA256.count ? downloadedSHA256[index] : nil
            } else if step.downloads.isEmpty {
                sha256 = nil
            } else {
                break
            }
            parent = try CheckpointKeys.step(parent: parent, index: index, step: step.customizer, downloadedSHA256: sha256)
            plan.customize[index].checkpointKey = parent
        }
        return plan
    }

    /// `kiln build --plan`: the plan without booting, fetching or building anything. A catalog image that is not
    /// built yet is an error; `--accel auto` uses the answer cached for this host boot, if any.
    public static func plan(_ request: BuildRequest) async throws(KilnError) -> BuildPlan {
        let loaded = TemplateLoader.load(file: request.templatePath, inputs: request.inputs)
        let chosen = try choose(loaded, request: request)
        try checkOutputDestinations(chosen.template, request: request)
        let store = try StateStore.open(request.state)
        let source = try await resolveSource(chosen.template, request: request, store: store, allowBuild: false, progress: { _ in }, resolved: { _, _ in })
        let plan = try plan(chosen, request: request, source: source)
        let accelerator = AcceleratorProbe.cached(request.accelerator, cacheDirectory: request.state.path)
        var keyed = try withCheckpointKeys(plan, accelerator: accelerator, downloadedSHA256: nil)
        keyed.secrets = loaded.secrets
        return keyed
    }
}
