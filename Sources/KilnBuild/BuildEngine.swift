import Foundation
import KilnGuest
import KilnMachine
import KilnSSH
import KilnStore
import KilnSupport
import KilnTemplate

public struct BuildRequest: Sendable {
    public var templatePath: String
    /// Which imageTemplates resource, when an ARM template holds several.
    public var name: String?
    public var parameters: [String: String]
    public var state: StateDirectory
    public var accelerator: AcceleratorChoice
    public var libvirtURI: String?
    /// Overrides errorHandling.onCustomizerError / onValidationError.
    public var onError: ErrorAction?
    public var sshTimeout: Duration
    /// The created template this run belongs to (`kiln template run`); nil for a one-shot `kiln build`, whose run is
    /// recorded under the template's own name.
    public var createdTemplateName: String?
    /// A run ID chosen by the caller (`template run --no-wait` prints it before the build starts).
    public var runID: String?
    /// Resume from the longest matching chain of checkpoints in the build cache (`--no-cache`: false).
    public var useCache: Bool
    /// Keep a checkpoint after boot and after each customizer (`--no-checkpoints`: false).
    public var writeCheckpoints: Bool
    /// The build cache's size limit, enforced after the build (least recently used checkpoints go first).
    public var cacheLimitBytes: UInt64
    /// `--resume RUN`: continue from the last checkpoint of that run that still matches the template.
    public var resumeRun: String?
    /// `--offline`: no network. Downloads come from the download cache (`kiln fetch`); a catalog image that is not
    /// built yet is an error instead of a build.
    public var offline: Bool
    /// Everything the template's parameters and scope functions take: `parameters`, parameter files, the secure
    /// parameters' environment, the subscription and resource group stand-ins.
    public var inputs: DeploymentInputs
    /// `--force`: a VHD target whose uri names an existing file replaces it (without it, the build refuses to start).
    public var force: Bool
    /// `--isolate-network`: the guest reaches nothing outside, the host's loopback included (MachineOptions).
    public var isolateNetwork = false

    public init(templatePath: String, name: String? = nil, parameters: [String: String] = [:], inputs: DeploymentInputs? = nil, state: StateDirectory,
                accelerator: AcceleratorChoice = .auto, libvirtURI: String? = nil, onError: ErrorAction? = nil,
                sshTimeout: Duration = .seconds(20 * 60), createdTemplateName: String? = nil, runID: String? = nil,
                useCache: Bool = true, writeCheckpoints: Bool = true, cacheLimitBytes: UInt64 = CheckpointCache.defaultLimitBytes(),
                resumeRun: String? = nil, offline: Bool = false, force: Bool = false) {
        self.templatePath = templatePath
        self.name = name
        self.parameters = parameters
        self.state = state
        self.accelerator = accelerator
        self.libvirtURI = libvirtURI
        self.onError = onError
        self.sshTimeout = sshTimeout
        self.createdTemplateName = createdTemplateName
        self.runID = runID
        self.useCache = useCache
        self.writeCheckpoints = writeCheckpoints
        self.cacheLimitBytes = cacheLimitBytes
        self.resumeRun = resumeRun
        self.offline = offline
        self.force = force
        self.inputs = inputs ?? DeploymentInputs(parameters: parameters, environment: ProcessInfo.processInfo.environment)
    }
}

/// What a finished build leaves: its record, and the VM if errorHandling kept it.
public struct BuildResult: Sendable {
    public var record: RunRecord
    public var runDirectory: String
    public var keptVM: KeptVM?
}

/// The AIB message for a build that ran out of time.
public let buildTimeoutMessage = "[ERROR] Failed while waiting for packerizer: Timeout waiting for microservice to complete: 'context deadline exceeded'"

/// One `kiln build`: template file → validated model → plan → overlay on the untouched source → VM → session →
/// customizers → validation → deprovision → shutdown → distribute → run record.
public final class BuildEngine: @unchecked Sendable {
    let request: BuildRequest
    let events: @Sendable (BuildEvent) -> Void
    var record: RunRecord
    private(set) var runDirectory: String
    private var log: CustomizationLog?
    var machine: BuildMachine?
    private var phaseStart = ContinuousClock.now
    private var currentPhase: String?
    private var store: StateStore?

    /// Secure parameter values, masked in every event and log line once the template is loaded.
    private let secrets = SecretMask()

    public init(_ request: BuildRequest, events: @escaping @Sendable (BuildEvent) -> Void) {
        self.request = request
        self.events = { [secrets] event in events(secrets.mask(event)) }
        let runID = request.runID ?? RunID.make()
        record = RunRecord(runID: runID, templateName: "", templatePath: request.templatePath)
        runDirectory = request.state.runsPath + "/" + runID
    }

    public var runID: String { record.runID }

    enum Outcome: Error {
        case failed(String)
        case timedOut
        case canceled
    }

    /// Runs the build to its end. Never throws: the record says how it ended.
    public func run() async -> BuildResult {
        // Validation happens before anything is created, so bad input leaves nothing behind.
        let loaded = TemplateLoader.load(file: request.templatePath, inputs: request.inputs)
        secrets.set(loaded.secrets)
        for warning in loaded.warnings { events(.warning("\(request.templatePath): \(warning)")) }
        let chosen: LoadedTemplate
        do {
            chosen = try BuildPlanner.choose(loaded, request: request)
        } catch {
            return finishEarly(.failed(error.message))
        }
        let template = chosen.template
        record.templateName = request.createdTemplateName ?? template.name
        do {
            try BuildPlanner.checkOutputDestinations(template, request: request)
        } catch {
            return finishEarly(.failed(error.message))
        }
        do {
            store = try StateStore.open(request.state)
        } catch {
            return finishEarly(.failed("\(error)"))
        }
        do {
            // Mode 0700 from mkdir on: the log, scripts, keys and disks of a run are the user's alone.
            try PrivateDirectory.createPath(runDirectory + "/downloads")
            // If Kiln is killed outright, the run's QEMU and qemu-img (their command lines name the run directory)
            // go with it.
            ProcessWatchdog.shared?.killProcesses(naming: runDirectory)
        } catch {
            return finishEarly(.failed("cannot create the run directory \(runDirectory): \(error.message)"))
        }
        let log = CustomizationLog(path: runDirectory + "/customization.log")
        self.log = log
        log.write("kiln", "build \(record.runID) of \(template.name) from \(request.templatePath)")
        persist()

        let timeout = Duration.seconds(template.properties.buildTimeoutInMinutes * 60)
        let outcome = await withDeadline(timeout) { () async throws -> Void in
            try await self.build(chosen)
        }
        return await finish(outcome, template: template)
    }

    private func finishEarly(_ outcome: Outcome) -> BuildResult {
        if case .failed(let message) = outcome {
            record.runState = .failed
            record.message = message
        }
        record.endTime = Date()
        events(.finished(record))
        return BuildResult(record: record, runDirectory: runDirectory, keptVM: nil)
    }

    /// Runs `body`, cancelling it when `timeout` passes; a timeout is distinguishable from a cancel.
    private func withDeadline(_ timeout: Duration, _ body: @escaping @Sendable () async throws -> Void) async -> Result<Void, Outcome> {
        let timedOut = Locked(false)
        let work = Task { try await body() }
        let timer = Task {
            try await Task.sleep(for: timeout)
            timedOut.withLock { $0 = true }
            work.cancel()
        }
        let result: Result<Void, Outcome>
        do {
            try await withTaskCancellationHandler {
                try await work.value
            } onCancel: {
                work.cancel()
            }
            result = .success(())
        } catch let outcome as Outcome {
            result = .failure(timedOut.current ? .timedOut : outcome)
        } catch {
            if timedOut.current {
                result = .failure(.timedOut)
            } else if Task.isCancelled || (error as? KilnError)?.code == .cancelled || error is CancellationError {
                result = .failure(.canceled)
            } else if let failure = error as? StepFailure {
                result = .failure(.failed(failure.message))
            } else {
                result = .failure(.failed("\(error)"))
            }
        }
        timer.cancel()
        return result
    }

    func enterPhase(_ subState: RunSubState, _ name: String) {
        endPhase()
        record.runSubState = subState
        currentPhase = name
        phaseStart = .now
        log?.write("kiln", "phase: \(name) (\(subState.rawValue))")
        events(.phase(subState, name))
        persist()
    }

    private func endPhase() {
        if let currentPhase {
            let elapsed = ContinuousClock.now - phaseStart
            record.phases.append(.init(name: currentPhase, seconds: elapsed.inSeconds))
        }
        currentPhase = nil
    }

    func persist() {
        record.write(to: runDirectory + "/run.json")
        do {
            try store?.saveRun(record, runDirectory: runDirectory, fromCreatedTemplate: request.createdTemplateName != nil)
        } catch {
            events(.warning("cannot record the run in the state database: \(error)"))
        }
    }

    var keepVMOnError = false

    /// Step labels by template path, for logs and events (LoadedTemplate.stepLabels).
    private var stepLabels: [String: String] = [:]

    private func build(_ loaded: LoadedTemplate) async throws {
        let template = loaded.template
        stepLabels = loaded.stepLabels
        let log = self.log ?? CustomizationLog(path: runDirectory + "/customization.log")
        log.mask = secrets
        let offlineCache = request.offline ? DownloadCache(state: request.state) : nil
        if let offlineCache {
            // Every missing download at once, each with the template path that uses it, before anything else.
            let missing = DownloadCache.downloads(of: loaded).filter { DownloadCache.needsNetwork($0.uri) && offlineCache.lookup($0.uri) == nil }
            guard missing.isEmpty else {
                throw Outcome.failed("--offline: \(missing.count) download(s) are not in the download cache (kiln fetch \(request.templatePath) first):\n"
                                     + missing.map { "  \($0.path): \($0.uri)" }.joined(separator: "\n"))
            }
            log.write("kiln", "offline: downloads come from \(offlineCache.directory)")
        }
        enterPhase(.building, "resolve source")
        let source = try await BuildPlanner.resolveSource(template, request: request, store: try storeOrFail(), allowBuild: !request.offline,
                                                          progress: { [events] in events(.message($0)) },
                                                          resolved: { [events] reference, version in
                                                              log.write("kiln", "\(reference) resolved to \(version)")
                                                              events(.message("source \(reference) is \(version)"))
                                                          })
        record.source = source.displayName
        log.write("kiln", "source: \(source.displayName) (\(source.path), \(source.format), \(source.firmware.rawValue))")
        var plan = try BuildPlanner.plan(loaded, request: request, source: source)
        let guestOS = plan.guestOS

        let decision = await AcceleratorProbe.decide(request.accelerator, cacheDirectory: request.state.path)
        log.write("kiln", "accelerator \(decision.accelerator.rawValue): \(decision.evidence)")
        events(.message("accelerator \(decision.accelerator.rawValue): \(decision.evidence)"))

        // Everything a step downloads is fetched and checked before the VM boots: a bad checksum costs no boot.
        enterPhase(.building, "fetch")
        let downloads = runDirectory + "/downloads"
        let prefetcher = StepRunner(connection: nil, log: log, events: events, downloads: downloads, guestOS: guestOS, offline: offlineCache, labels: stepLabels)
        var downloaded: [String?] = []
        for step in plan.customize + plan.validations {
            downloaded.append(try await prefetcher.prefetch(step.customizer, index: step.index, path: step.path))
        }
        plan = try BuildPlanner.withCheckpointKeys(plan, accelerator: decision, downloadedSHA256: downloaded)
        if guestOS == .windows {
            if request.isolateNetwork {
                // A Windows guest fetches File uploads from Kiln's server on the host address.
                throw Outcome.failed("--isolate-network: a Windows build fetches its File uploads from the host (10.0.2.2), which isolation blocks; build without it")
            }
            try await buildWindows(template, plan: plan, downloads: downloads, prefetcher: prefetcher, log: log)
            return
        }

        var options = MachineOptions(runID: record.runID, source: source, size: plan.size, osDiskSizeGB: plan.osDiskSizeGB,
                                     accelerator: decision.accelerator, runDirectory: runDirectory, libvirtURI: request.libvirtURI,
                                     stateDirectory: request.state, username: plan.username)
        options.isolateNetwork = request.isolateNetwork
        options.instanceMetadata = plan.instanceMetadata
        // Checkpoint keys: the booted source, then each customizer on top of the one before.
        guard let keys = plan.checkpointKeys else {
            throw KilnError(.internalError, "the plan of a Linux build holds no checkpoint keys after its downloads were fetched")
        }
        let steps = plan.customize
        let cache = CheckpointCache(state: request.state)
        checkpointsEnabled = request.writeCheckpoints

        var resumed: (position: Int, entry: CheckpointEntry, machine: BuildMachine, session: SSHSession)?
        var within: Set<String>?
        if let run = request.resumeRun {
            let folders = RunRecord.read(from: request.state.runsPath + "/\(run)/run.json")?.checkpoints ?? []
            within = Set(folders)
            events(.message("resuming run \(run): \(folders.count) checkpoint(s) of it are candidates"))
        }
        if request.useCache || within != nil,
           let found = await resumeFromCache(cache, keys: keys, within: within, options: options, steps: steps, log: log) {
            resumed = found
        } else if Task.isCancelled {
            throw CancellationError()
        } else if let run = request.resumeRun {
            throw Outcome.failed("--resume \(run): no checkpoint of run \(run) matches \(request.templatePath) (a customizer before the one that failed changed, the source or VM profile changed, or its checkpoints were pruned); build without --resume")
        } else {
            // The boot's overlay goes straight into the first checkpoint's folder.
            options.overlayPath = beginCheckpoint(cache, key: keys[0])
        }
        let machine: BuildMachine
        let session: SSHSession
        var parent: CheckpointEntry?
        var firstStep = 0
        if let resumed {
            machine = resumed.machine
            session = resumed.session
            parent = resumed.entry
            firstStep = resumed.position
            self.machine = machine
        } else {
            enterPhase(.building, "boot")
            machine = try await BuildMachine.boot(options) { [events] message in
                log.write("kiln", message)
                events(.message(message))
            }
            self.machine = machine
            session = try await machine.waitForSSH(timeout: request.sshTimeout)
        }
        let sshTimeout = request.sshTimeout
        let connection = GuestConnection(session: session, reconnectTimeout: sshTimeout) { [weak machine] () async throws(KilnError) -> any GuestSession in
            guard let machine else { throw KilnError(.cancelled, "the build VM is gone") }
            return try await machine.waitForSSH(timeout: sshTimeout)
        }
        log.write("kiln", "SSH ready on 127.0.0.1:\(machine.sshPort) as \(machine.username)")
        var runner = StepRunner(connection: connection, log: log, events: events, downloads: downloads, guestOS: guestOS, offline: offlineCache, labels: stepLabels)
        let errorHandling = template.properties.errorHandling
        runner.keepFailedScripts = (request.onError ?? errorHandling.onCustomizerError) == .abort
            || (request.onError ?? errorHandling.onValidationError) == .abort
        if resumed == nil {
            try await asBuildFailure { try await LinuxDeprovisioner.writeDefaultScript(connection.session) }
            log.write("kiln", "wrote AIB's default \(LinuxDeprovisioner.scriptPath) (a customizer may replace it)")
            parent = try await takeCheckpoint(cache, key: keys[0], nextKey: keys.count > 1 ? keys[1] : nil, parent: nil, step: nil,
                                              label: "boot", machine: machine, connection: connection, templateName: template.name)
        }

        if firstStep < steps.count {
            enterPhase(.customizing, "customize")
            for step in steps where step.index >= firstStep {
                let index = step.index
                try await runStep(runner.run, step.customizer, index: index, path: step.path,
                                  onError: request.onError ?? template.properties.errorHandling.onCustomizerError)
                if let checkpoint = try await takeCheckpoint(cache, key: keys[index + 1], nextKey: index + 2 < keys.count ? keys[index + 2] : nil,
                                                             parent: parent, step: index, label: step.label, machine: machine,
                                                             connection: connection, templateName: template.name) {
                    parent = checkpoint
                }
            }
        }

        if try await runValidations(plan.validations, template: template, run: runner.run) {
            await connection.close()
            return
        }

        enterPhase(.customizing, "deprovision")
        try await asBuildFailure { try await LinuxDeprovisioner(connection: connection, username: machine.username, log: log, events: events).run() }

        enterPhase(.customizing, "shutdown")
        log.write("kiln", "removing the build user \(machine.username), its key and home, and the SSH host keys; powering off")
        await connection.close()
        // The cleanup powers the guest off itself; ACPI only if it does not.
        let stopped = await machine.waitForStop(timeout: .seconds(180))
        let clean = stopped ? true : await machine.shutdown(session: nil, timeout: .seconds(120))
        guard clean else {
            throw Outcome.failed("the guest did not power off within 5m0s after deprovisioning; it was forced off and its disk may be inconsistent")
        }

        enterPhase(.distributing, "distribute")
        try await distribute(template, machine: machine, source: source, guestOS: guestOS, log: log)
    }

    /// A deprovisioner's StepFailure ends the build as a failure (not a cancel, should one arrive at the same moment).
    func asBuildFailure(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let failure as StepFailure {
            throw Outcome.failed(failure.message)
        }
    }

    // MARK: Checkpoints

    private var checkpointsEnabled = true
    /// Shared locks on every checkpoint this build uses or wrote: the cache never removes them under it.
    private var holds: [CheckpointHold] = []

    /// Resumes the longest chain of checkpoints the cache holds for `keys`. A checkpoint that does not resume is
    /// removed with a notice and the one before is tried. nil: nothing to resume, boot.
    private func resumeFromCache(_ cache: CheckpointCache, keys: [String], within: Set<String>?, options: MachineOptions, steps: [BuildPlan.PlannedStep],
                                 log: CustomizationLog) async -> (position: Int, entry: CheckpointEntry, machine: BuildMachine, session: SSHSession)? {
        var position = keys.count - 1
        while position >= 0 {
            defer { position -= 1 }
            guard let entry = cache.lookup(keys[position], within: within) else { continue }
            let chain = cache.chain(of: entry)
            var chainHolds = chain.compactMap { cache.hold($0) }
            guard chainHolds.count == chain.count, FileManager.default.fileExists(atPath: entry.machine.memoryPath) else { continue }
            enterPhase(.building, "resume")
            let note = "resuming from checkpoint \(entry.shortKey) (\(entry.stepDescription), run \(entry.runID), \(entry.createdAt.formatted(.iso8601)))"
            log.write("kiln", note)
            events(.message(note))
            var options = options
            options.overlayPath = position + 1 < keys.count ? beginCheckpoint(cache, key: keys[position + 1]) : nil
            do {
                let machine = try await BuildMachine.resume(options, from: entry.machine) { [events] message in
                    log.write("kiln", message)
                    events(.message(message))
                }
                self.machine = machine
                let session: SSHSession
                do {
                    // The guest's sshd is already running: it answers at once, or the checkpoint is no good.
                    session = try await machine.waitForSSH(timeout: .seconds(120))
                    try await setGuestClock(session)
                } catch {
                    self.machine = nil
                    await machine.teardown(keepFiles: false)
                    throw error
                }
                holds += chainHolds
                for member in chain { cache.touch(member) }
                let reused = steps.prefix(position).map(\.label)
                record.resumedFrom = "\(entry.shortKey) \(entry.stepDescription) (run \(entry.runID))"
                record.checkpoints = chain.reversed().map(\.folder)
                record.reusedSteps = reused
                for (index, label) in reused.enumerated() {
                    log.write(label, "reused from the build cache")
                    events(.customizerFinished(index: index, name: label, seconds: 0, outcome: "reused"))
                }
                persist()
                return (position, entry, machine, session)
            } catch {
                abandonPending()
                if let kiln = error as? KilnError, kiln.code == .cancelled || Task.isCancelled { return nil }
                if "\(error)".contains("already exists") || "\(error)".contains("already defined") {
                    // Another build on the same libvirt daemon runs this chain's guest right now: not a broken
                    // checkpoint, and its ancestors share the guest's name.
                    let notice = "checkpoint \(entry.shortKey) is in use by another build on \(request.libvirtURI ?? "this driver"); booting instead"
                    log.write("kiln", notice)
                    events(.warning(notice))
                    return nil
                }
                let notice = "checkpoint \(entry.shortKey) (\(entry.stepDescription)) did not resume and is discarded: \(error)"
                log.write("kiln", notice)
                events(.warning(notice))
                chainHolds.removeAll()
                _ = cache.remove(entry)
            }
        }
        return nil
    }

    /// The checkpoint folder the running guest's overlay lives in, until the checkpoint is complete.
    private var pending: PendingCheckpoint?

    /// Creates the folder for checkpoint `key` and returns the overlay path in it; nil (the run directory) when
    /// checkpoints are off or the folder cannot be made.
    private func beginCheckpoint(_ cache: CheckpointCache, key: String) -> String? {
        guard checkpointsEnabled else { return nil }
        do {
            let folder = try cache.begin(key: key, runID: record.runID)
            pending = folder
            return folder.folder + "/disk.qcow2"
        } catch {
            disableCheckpoints(after: error)
            return nil
        }
    }

    private func abandonPending() {
        pending?.abandon()
        pending = nil
    }

    private func disableCheckpoints(after error: any Error) {
        guard checkpointsEnabled else { return }
        checkpointsEnabled = false
        let warning = "cannot write a checkpoint, the build goes on without them: \(error)"
        log?.write("kiln", warning)
        events(.warning(warning))
    }

    /// Completes the checkpoint whose folder holds the guest's overlay: an external snapshot writes the memory and
    /// turns the overlay into the checkpoint's layer; the guest runs on in the next checkpoint's folder (or the run
    /// directory after the last). nil when checkpoints are off, or when this one failed with the guest still
    /// running (the build goes on without checkpoints).
    private func takeCheckpoint(_ cache: CheckpointCache, key: String, nextKey: String?, parent: CheckpointEntry?, step: Int?, label: String,
                                machine: BuildMachine, connection: GuestConnection, templateName: String) async throws -> CheckpointEntry? {
        guard checkpointsEnabled, let current = pending else { return nil }
        let clock = ContinuousClock()
        let start = clock.now
        let next: PendingCheckpoint?
        if let nextKey {
            do {
                next = try cache.begin(key: nextKey, runID: record.runID)
            } catch {
                disableCheckpoints(after: error)
                return nil
            }
        } else {
            next = nil
        }
        // What the step wrote goes to its own layer, not to whichever layer the guest's writeback reaches later.
        _ = try? await connection.session.exec("sync")
        let frozen: MachineCheckpoint
        do {
            frozen = try await machine.snapshot(nextOverlay: next.map { $0.folder + "/disk.qcow2" } ?? runDirectory + "/disk.qcow2",
                                                root: parent?.machine)
        } catch {
            next?.abandon()
            guard await machine.isRunning() else { throw error }
            disableCheckpoints(after: error)
            return nil
        }
        let now = Date()
        let entry = CheckpointEntry(key: key, parentKey: parent?.key, parentFolder: parent?.folder, step: step, label: label,
                                    templateName: templateName, runID: record.runID, createdAt: now, lastUsedAt: now, machine: frozen)
        try cache.commit(entry)
        holds.append(current.hold)
        record.checkpoints = (record.checkpoints ?? []) + [entry.folder]
        persist()
        pending = next
        try await setGuestClock(connection.session)
        let note = "checkpoint \(entry.shortKey) \(entry.stepDescription): \(ByteSize.format(cache.sizeBytes(entry))) in \(DurationText.format(clock.now - start))"
        log?.write("kiln", note)
        events(.message(note))
        return entry
    }

    /// A resumed guest's clock stands where it was saved, and a snapshot pauses the guest: set it to the host's.
    private func setGuestClock(_ session: any GuestSession) async throws {
        _ = try await session.exec("sudo -n date -u -s @\(Int(Date().timeIntervalSince1970)) >/dev/null 2>&1 || true")
    }

    /// Runs `validate.inVMValidations` (numbered after the customizers). A failure ends the build unless
    /// continueDistributeOnFailure is set (and sourceValidationOnly is not). True when the build ends here:
    /// sourceValidationOnly distributes nothing.
    func runValidations(_ validations: [BuildPlan.PlannedStep], template: ImageTemplate,
                        run: (Customizer, Int, String) async throws -> Void) async throws -> Bool {
        let validate = template.properties.validate
        let sourceOnly = validate?.sourceValidationOnly == true
        if !validations.isEmpty {
            enterPhase(.validating, "validate")
            var failure: String?
            for step in validations {
                do {
                    try await runStep(run, step.customizer, index: step.index, path: step.path,
                                      onError: request.onError ?? template.properties.errorHandling.onValidationError)
                } catch let stepFailure as StepFailure {
                    failure = stepFailure.message
                    break
                }
            }
            if let failure {
                guard validate?.continueDistributeOnFailure == true, !sourceOnly else {
                    throw Outcome.failed("validation failed: \(failure)")
                }
                events(.warning("validation failed; distributing anyway (continueDistributeOnFailure): \(failure)"))
            }
        }
        if sourceOnly {
            record.message = "source validation succeeded; nothing is distributed with sourceValidationOnly"
        }
        return sourceOnly
    }

    func runStep(_ run: (Customizer, Int, String) async throws -> Void, _ step: Customizer, index: Int, path: String, onError: ErrorAction) async throws {
        let label = StepRunner.label(step, index: index, path: path, labels: stepLabels)
        events(.customizerStarted(index: index, name: label, type: step.typeName))
        log?.write(label, "start \(step.typeName) (\(path))")
        log?.packerDebug(label, "[INFO] (telemetry) Starting provisioner \(step.packerProvisioner)")
        defer { log?.packerDebug(label, "[INFO] (telemetry) ending \(step.packerProvisioner)") }
        let clock = ContinuousClock()
        let start = clock.now
        do {
            try await run(step, index, path)
            let elapsed = clock.now - start
            log?.write(label, "finished in \(DurationText.format(elapsed))")
            events(.customizerFinished(index: index, name: label, seconds: elapsed.inSeconds, outcome: "succeeded"))
        } catch {
            let elapsed = clock.now - start
            let message = (error as? StepFailure)?.message ?? "\(path) (\(label)): \(error)"
            log?.write(label, "failed after \(DurationText.format(elapsed)): \(message)")
            events(.customizerFinished(index: index, name: label, seconds: elapsed.inSeconds, outcome: "failed"))
            if onError == .abort { keepVMOnError = true }
            if error is CancellationError || (error as? KilnError)?.code == .cancelled { throw error }
            throw StepFailure(message: message)
        }
    }

    func distribute(_ template: ImageTemplate, machine: BuildMachine, source: SourceImage, guestOS: OSType,
                            log: CustomizationLog) async throws {
        // Kiln's own overlay: qcow2 on the source, its backing file by design.
        let info = try await DiskImageProbe.inspect(machine.overlayPath, format: "qcow2", allowingBackingFile: true)
        let distribution = Distribution(store: try storeOrFail(), runID: record.runID, runDirectory: runDirectory,
                                        templateLocation: template.location, source: source, guestOS: guestOS, log: log, force: request.force,
                                        protected: OutputDestination.protectedDirectories(state: request.state), events: events)
        let outputs = await distribution.run(template.properties.distribute, disk: machine.overlayPath, virtualSizeBytes: info.virtualSizeBytes)
        record.runOutputs = outputs
        persist()
        let failures = outputs.filter { $0.provisioningState != "Succeeded" }
        if !outputs.isEmpty, failures.count == outputs.count {
            throw Outcome.failed("every distribution target failed: " + failures.compactMap(\.error).joined(separator: "; "))
        }
        if !failures.isEmpty { partiallySucceeded = true }
    }

    private var partiallySucceeded = false

    private func storeOrFail() throws(KilnError) -> StateStore {
        guard let store else { throw KilnError(.internalError, "the state database is not open") }
        return store
    }

    private func finish(_ outcome: Result<Void, Outcome>, template: ImageTemplate) async -> BuildResult {
        endPhase()
        var kept: KeptVM?
        switch outcome {
        case .success:
            record.runState = partiallySucceeded ? .partiallySucceeded : .succeeded
            if record.message.isEmpty {
                record.message = partiallySucceeded ? "some distribution targets failed" : "build succeeded"
            }
        case .failure(.timedOut):
            record.runState = .failed
            record.message = buildTimeoutMessage + " (buildTimeoutInMinutes \(template.properties.buildTimeoutInMinutes))"
        case .failure(.canceled):
            record.runState = .canceled
            record.message = "the build was canceled"
        case .failure(.failed(let message)):
            record.runState = .failed
            record.message = message + "\nSee \(runDirectory)/customization.log"
        }
        if case .failure(.failed) = outcome, keepVMOnError, let machine, await machine.isRunning() {
            let vm = KeptVM(runID: record.runID, templateName: record.templateName, templatePath: request.templatePath,
                            domainName: machine.domainName, sshPort: machine.sshPort, username: machine.username,
                            privateKeyPath: machine.privateKeyPath, knownHostsPath: runDirectory + "/known_hosts",
                            hostKey: machine.hostKeyPin.pinnedKey ?? "", owner: ProcessIdentity.current.description,
                            keptAt: Date(), failure: record.message,
                            winrmURL: machine.winRMOptions.map { $0.endpoint.description },
                            winrmPasswordPath: machine.options.windows.map { _ in KeptVM.passwordPath(runDirectory: runDirectory) },
                            winrmCertificateSHA256: machine.winRMCertificateSHA256.map { $0.map { String(format: "%02x", $0) }.joined() })
            do {
                try vm.write(runDirectory: runDirectory, winrmPassword: machine.options.windows?.password)
            } catch {
                events(.warning("\(error)"))
            }
            kept = vm
            record.message += vm.winrmURL == nil ? "\nThe build VM is kept (errorHandling abort): kiln vm ssh \(record.runID), or \(vm.sshCommand)"
                                                 : "\nThe build VM is kept (errorHandling abort): \(vm.reachCommand); kiln vm stop \(record.runID) when done"
        } else {
            await machine?.teardown(keepFiles: false)
            abandonPending()
        }
        record.endTime = Date()
        log?.write("kiln", "runState \(record.runState.rawValue): \(record.message)")
        log?.close()
        try? FileManager.default.removeItem(atPath: runDirectory + "/downloads")
        if kept == nil {
            holds.removeAll()
            let pruned = CheckpointCache(state: request.state).prune(maxBytes: request.cacheLimitBytes)
            if !pruned.removed.isEmpty {
                events(.message("build cache over \(ByteSize.format(request.cacheLimitBytes)): removed \(pruned.removed.count) least recently used checkpoint(s), \(ByteSize.format(pruned.freedBytes))"))
            }
        }
        persist()
        events(.finished(record))
        return BuildResult(record: record, runDirectory: runDirectory, keptVM: kept)
    }

    /// Tears down a VM kept after `abort`, when the caller is done with it.
    public func releaseKeptVM() async {
        await machine?.teardown(keepFiles: false)
        abandonPending()
        KeptVM.remove(runDirectory: runDirectory)
    }
}
