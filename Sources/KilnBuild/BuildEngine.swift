import Foundation
import KilnCustomizers
import KilnDistribution
import KilnFetch
import KilnGuest
import KilnMachine
import KilnStore
import KilnSupport
import KilnTemplate

/// One `kiln build`: template file → validated model → plan → overlay on the untouched source → VM → session →
/// customizers → validation → deprovision → shutdown → distribute → run record.
public final class BuildEngine: @unchecked Sendable {
    let request: BuildRequest
    let events: @Sendable (BuildEvent) -> Void
    var record: RunRecord
    private(set) var runDirectory: String
    private(set) var log: CustomizationLog?
    var machine: BuildMachine?
    /// The VM errorHandling abort kept, once the build has ended.
    private(set) var keptVM: KeptVM?
    private var phaseStart = ContinuousClock.now
    private var currentPhase: String?
    private var store: StateStore?

    /// Secure parameter values, masked in every event and log line once the template is loaded.
    private let secrets = SecretMask()

    /// `events` for the customizers and distribution, which report progress without knowing the build's events.
    var progress: @Sendable (ProgressEvent) -> Void {
        { [events] in events(BuildEvent($0)) }
    }

    public init(_ request: BuildRequest, events: @escaping @Sendable (BuildEvent) -> Void) {
        self.request = request
        self.events = { [secrets] event in events(secrets.mask(event)) }
        let runID = request.runID ?? RunID.make()
        record = RunRecord(runID: runID, templateName: "", templatePath: request.templatePath)
        runDirectory = request.state.runsPath + "/" + runID
    }

    public var runID: String { record.runID }

    /// How a build ended, when not with success: made from what the build threw in one place (`withDeadline`).
    enum Ending {
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
        // The build VM is sized from vmSize: an unknown size fails here, before a run directory or a VM exists.
        if AzureVMSize.named(template.properties.vmProfile.vmSize) == nil {
            let path = chosen.basePath.appending("properties").appending("vmProfile").appending("vmSize")
            return finishEarly(.failed("\(request.templatePath): \(path): expected an Azure VM size Kiln knows (it sizes the build VM from it), found \(AzureVMSize.unknownSizeDescription(template.properties.vmProfile.vmSize))"))
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

    private func finishEarly(_ outcome: Ending) -> BuildResult {
        if case .failed(let message) = outcome {
            record.runState = .failed
            record.message = message
        }
        record.endTime = Date()
        events(.finished(record))
        return BuildResult(record: record, runDirectory: runDirectory, keptVM: nil)
    }

    /// Runs `body`, cancelling it when `timeout` passes; a timeout is distinguishable from a cancel. nil: it succeeded.
    private func withDeadline(_ timeout: Duration, _ body: @escaping @Sendable () async throws -> Void) async -> Ending? {
        let timedOut = Locked(false)
        let work = Task { try await body() }
        let timer = Task {
            try await Task.sleep(for: timeout)
            timedOut.withLock { $0 = true }
            work.cancel()
        }
        let result: Ending?
        do {
            try await withTaskCancellationHandler {
                try await work.value
            } onCancel: {
                work.cancel()
            }
            result = nil
        } catch {
            if timedOut.current {
                result = .timedOut
            } else if let failure = error as? KilnError, failure.code == .buildFailed {
                result = .failed(failure.message)
            } else if Task.isCancelled || (error as? KilnError)?.code == .cancelled || error is CancellationError {
                result = .canceled
            } else if let failure = error as? StepFailure {
                result = .failed(failure.message)
            } else {
                result = .failed("\(error)")
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

    /// Whether this build writes checkpoints (off with --no-checkpoints, or after one could not be written).
    var checkpointsEnabled = true
    /// Shared locks on every checkpoint this build uses or wrote: the cache never removes them under it.
    var holds: [CheckpointHold] = []
    /// The checkpoint folder the running guest's overlay lives in, until the checkpoint is complete.
    var pending: PendingCheckpoint?

    /// Step labels by template path, for logs and events (LoadedTemplate.stepLabels).
    private var stepLabels: [String: String] = [:]

    /// The steps that ran, cleaned up in reverse when the build ends.
    private let sequence = StepSequence()

    /// Plans the build (resolve, fetch), then runs the steps the planner picks for the guest's OS.
    private func build(_ loaded: LoadedTemplate) async throws {
        stepLabels = loaded.stepLabels
        let log = self.log ?? CustomizationLog(path: runDirectory + "/customization.log")
        log.mask = secrets
        let state = BuildState(loaded: loaded, log: log, offlineCache: request.offline ? DownloadCache(state: request.state) : nil,
                               downloads: runDirectory + "/downloads")
        _ = try await sequence.run([ResolveStep(), PrefetchStep()], on: self, state: state)
        guard let plan = state.plan else { throw KilnError(.internalError, "the build was not planned") }
        _ = try await sequence.run(BuildPlanner.steps(for: plan), on: self, state: state)
    }

    /// A deprovisioner's StepFailure ends the build as a failure (not a cancel, should one arrive at the same moment).
    func asBuildFailure(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let failure as StepFailure {
            throw KilnError(.buildFailed, failure.message)
        }
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
                    throw KilnError(.buildFailed, "validation failed: \(failure)")
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
        // On a remote host the guest's overlay comes here first (only the build's changes travel).
        try await machine.fetchDiskIfRemote()
        // Kiln's own overlay: qcow2 on the source, its backing file by design.
        let info = try await DiskImageProbe.inspect(machine.overlayPath, format: "qcow2", allowingBackingFile: true)
        let distribution = Distribution(store: try storeOrFail(), runID: record.runID, runDirectory: runDirectory,
                                        templateLocation: template.location, source: source, guestOS: guestOS, log: log, force: request.force,
                                        protected: OutputDestination.protectedDirectories(state: request.state), events: progress)
        let outputs = await distribution.run(template.properties.distribute, disk: machine.overlayPath, virtualSizeBytes: info.virtualSizeBytes)
        record.runOutputs = outputs
        persist()
        let failures = outputs.filter { $0.provisioningState != "Succeeded" }
        if !outputs.isEmpty, failures.count == outputs.count {
            throw KilnError(.buildFailed, "every distribution target failed: " + failures.compactMap(\.error).joined(separator: "; "))
        }
        if !failures.isEmpty { partiallySucceeded = true }
    }

    private var partiallySucceeded = false

    func storeOrFail() throws(KilnError) -> StateStore {
        guard let store else { throw KilnError(.internalError, "the state database is not open") }
        return store
    }

    private func finish(_ outcome: Ending?, template: ImageTemplate) async -> BuildResult {
        endPhase()
        var kept: KeptVM?
        switch outcome {
        case nil:
            record.runState = partiallySucceeded ? .partiallySucceeded : .succeeded
            if record.message.isEmpty {
                record.message = partiallySucceeded ? "some distribution targets failed" : "build succeeded"
            }
        case .timedOut:
            record.runState = .failed
            record.message = buildTimeoutMessage + " (buildTimeoutInMinutes \(template.properties.buildTimeoutInMinutes))"
        case .canceled:
            record.runState = .canceled
            record.message = "the build was canceled"
        case .failed(let message):
            record.runState = .failed
            record.message = message + "\nSee \(runDirectory)/customization.log"
        }
        if case .failed = outcome, keepVMOnError, let machine, await machine.isRunning() {
            let vm = KeptVM(runID: record.runID, templateName: record.templateName, templatePath: request.templatePath,
                            domainName: machine.domainName, sshPort: machine.sshPort, username: machine.username,
                            privateKeyPath: machine.privateKeyPath, knownHostsPath: runDirectory + "/known_hosts",
                            hostKey: machine.hostKeyPin.pinnedKey ?? "", owner: ProcessIdentity.current.description,
                            keptAt: Date(), failure: record.message,
                            winrmURL: machine.options.windows == nil ? nil : machine.endpoint.url,
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
        }
        keptVM = kept
        await sequence.cleanup(self)
        record.endTime = Date()
        log?.write("kiln", "runState \(record.runState.rawValue): \(record.message)")
        log?.close()
        try? FileManager.default.removeItem(atPath: runDirectory + "/downloads")
        if kept == nil {
            // Everything the run started has stopped: a tool the user now runs on its outputs is not Kiln's to kill.
            ProcessWatchdog.shared?.forgetProcesses(naming: runDirectory)
            holds.removeAll()
            let pruned = CheckpointCache(state: request.state).prune(maxBytes: request.cacheLimitBytes)
            await forgetRemoteVolumes(of: pruned.removed)
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
        ProcessWatchdog.shared?.forgetProcesses(naming: runDirectory)
    }
}
