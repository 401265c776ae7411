import KilnCustomizers
import KilnFetch
import KilnGuest
import KilnMachine
import KilnTemplate

/// What a build's steps hand on to each other (Packer's state bag), filled in pipeline order: the plan by the
/// resolve and fetch steps, the guest by the boot and connect steps. Only the running step touches it.
final class BuildState: @unchecked Sendable {
    let loaded: LoadedTemplate
    let log: CustomizationLog
    /// `--offline`: what steps download comes from this cache.
    let offlineCache: DownloadCache?
    /// Where a run's downloads and scripts go.
    let downloads: String

    /// The plan: made by `ResolveStep`, its checkpoint keys completed by `PrefetchStep`.
    var plan: BuildPlan?
    /// Fetches and verifies downloads (made by `PrefetchStep`, used again by the customizers).
    var prefetcher: StepRunner?
    /// A Linux guest's checkpoint chain: from the boot step on.
    var checkpoints: CheckpointChain?
    /// The guest session the boot step opened, for the connect step.
    var session: (any GuestSession)?
    /// The connected guest: from the connect step on.
    var guest: ConnectedGuest?
    /// The customize phase starts with the first customizer that runs.
    var customizing = false

    init(loaded: LoadedTemplate, log: CustomizationLog, offlineCache: DownloadCache?, downloads: String) {
        self.loaded = loaded
        self.log = log
        self.offlineCache = offlineCache
        self.downloads = downloads
    }

    var template: ImageTemplate { loaded.template }
}

/// The guest as the customizers see it: how a customizer runs on it, what deprovisions it, how its session ends.
struct ConnectedGuest: Sendable {
    var run: @Sendable (Customizer, Int, String) async throws -> Void
    var deprovisioner: any Deprovisioner
    var close: @Sendable () async -> Void
}

/// A Linux build's checkpoints: the cache, the plan's keys (boot first), the last checkpoint taken or resumed,
/// and the first customizer to run (after the ones a resumed checkpoint holds).
final class CheckpointChain: @unchecked Sendable {
    let cache: CheckpointCache
    let keys: [String]
    var parent: CheckpointEntry?
    var firstStep: Int
    let resumed: Bool
    /// The session a checkpoint syncs and sets the clock through (the connect step's).
    var connection: GuestConnection?

    init(cache: CheckpointCache, keys: [String], parent: CheckpointEntry?, firstStep: Int, resumed: Bool) {
        self.cache = cache
        self.keys = keys
        self.parent = parent
        self.firstStep = firstStep
        self.resumed = resumed
    }
}
