import KilnCustomizers
import KilnFetch
import KilnMachine
import KilnSupport

/// Resolves the template's source and plans the build (the guest rules are checked here, once the guest's OS is
/// known), then decides the accelerator.
struct ResolveStep: BuildStep {
    var name: String { "resolve" }

    func run(_ build: BuildEngine, _ state: BuildState) async throws -> StepAction {
        let log = state.log
        let events = build.events
        let request = build.request
        if let offlineCache = state.offlineCache {
            // Every missing download at once, each with the template path that uses it, before anything else.
            let missing = DownloadCache.downloads(of: state.loaded).filter { DownloadCache.needsNetwork($0.uri) && offlineCache.lookup($0.uri) == nil }
            guard missing.isEmpty else {
                throw KilnError(.buildFailed, "--offline: \(missing.count) download(s) are not in the download cache (kiln fetch \(request.templatePath) first):\n"
                                                 + missing.map { "  \($0.path): \($0.uri)" }.joined(separator: "\n"))
            }
            log.write("kiln", "offline: downloads come from \(offlineCache.directory)")
        }
        build.enterPhase(.building, "resolve source")
        let source = try await BuildPlanner.resolveSource(state.template, request: request, store: try build.storeOrFail(), allowBuild: !request.offline,
                                                          progress: { events(.message($0)) },
                                                          resolved: { reference, version in
                                                              log.write("kiln", "\(reference) resolved to \(version)")
                                                              events(.message("source \(reference) is \(version)"))
                                                          })
        build.record.source = source.displayName
        log.write("kiln", "source: \(source.displayName) (\(source.path), \(source.format), \(source.firmware.rawValue))")
        var plan = try BuildPlanner.plan(state.loaded, request: request, source: source)
        let decision: AcceleratorDecision
        if let remote = request.remote, request.accelerator == .auto {
            decision = try await remote.acceleratorDecision()
        } else {
            decision = await AcceleratorProbe.decide(request.accelerator, cacheDirectory: request.state.path)
        }
        log.write("kiln", "accelerator \(decision.accelerator.rawValue): \(decision.evidence)")
        events(.message("accelerator \(decision.accelerator.rawValue): \(decision.evidence)"))
        plan.accelerator = decision
        state.plan = plan
        return .proceed
    }
}

/// Fetches and checks everything a step downloads before the VM boots (a bad checksum costs no boot), then
/// completes the plan's checkpoint keys with what was fetched.
struct PrefetchStep: BuildStep {
    var name: String { "fetch" }

    func run(_ build: BuildEngine, _ state: BuildState) async throws -> StepAction {
        guard let plan = state.plan, let accelerator = plan.accelerator else {
            throw KilnError(.internalError, "the fetch step runs before the build is planned")
        }
        build.enterPhase(.building, "fetch")
        let prefetcher = StepRunner(connection: nil, log: state.log, events: build.progress, downloads: state.downloads, guestOS: plan.guestOS,
                                    offline: state.offlineCache, labels: state.loaded.stepLabels)
        var downloaded: [String?] = []
        for step in plan.customize + plan.validations {
            downloaded.append(try await prefetcher.prefetch(step.customizer, index: step.index, path: step.path))
        }
        state.prefetcher = prefetcher
        state.plan = try BuildPlanner.withCheckpointKeys(plan, accelerator: accelerator, downloadedSHA256: downloaded)
        return .proceed
    }
}

extension BuildPlanner {
    /// The steps that run a plan: the Linux or the Windows form of booting, connecting, deprovisioning and powering
    /// off, around the same customizer, validation and distribution steps.
    static func steps(for plan: BuildPlan) -> [any BuildStep] {
        let customize: [any BuildStep] = plan.customize.map { CustomizeStep(planned: $0) }
        let boot: [any BuildStep] = plan.guestOS == .windows ? [WindowsBootStep(), WindowsConnectStep()] : [LinuxBootStep(), LinuxConnectStep()]
        return boot + customize + [ValidateStep(), DeprovisionStep(), PowerOffStep(guestOS: plan.guestOS), DistributeStep()]
    }
}
