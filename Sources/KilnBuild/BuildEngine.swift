import Foundation
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

    public init(templatePath: String, name: String? = nil, parameters: [String: String] = [:], state: StateDirectory,
                accelerator: AcceleratorChoice = .auto, libvirtURI: String? = nil, onError: ErrorAction? = nil,
                sshTimeout: Duration = .seconds(20 * 60), createdTemplateName: String? = nil, runID: String? = nil) {
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
    }
}

/// What a finished build leaves: its record, and the VM if errorHandling kept it.
public struct BuildResult: Sendable {
    public var record: RunRecord
    public var runDirectory: String
    public var keptVM: KeptVM?
}

public struct KeptVM: Sendable {
    public var runID: String
    public var domainName: String
    public var sshPort: Int
    public var username: String
    public var privateKeyPath: String

    public var sshCommand: String {
        "ssh -i \(privateKeyPath) -p \(sshPort) -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \(username)@127.0.0.1"
    }
}

/// The AIB message for a build that ran out of time.
public let buildTimeoutMessage = "[ERROR] Failed while waiting for packerizer: Timeout waiting for microservice to complete: 'context deadline exceeded'"

/// One `kiln build`: template file → validated model → plan → overlay on the untouched source → VM → session →
/// customizers → validation → deprovision → shutdown → distribute → run record.
public final class BuildEngine: @unchecked Sendable {
    let request: BuildRequest
    let events: @Sendable (BuildEvent) -> Void
    private var record: RunRecord
    private(set) var runDirectory: String
    private var log: CustomizationLog?
    private var machine: BuildMachine?
    private var phaseStart = ContinuousClock.now
    private var currentPhase: String?
    private var store: StateStore?

    public init(_ request: BuildRequest, events: @escaping @Sendable (BuildEvent) -> Void) {
        self.request = request
        self.events = events
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
        let loaded = TemplateLoader.load(file: request.templatePath, parameters: request.parameters)
        for warning in loaded.warnings { events(.warning("\(request.templatePath): \(warning)")) }
        guard loaded.isValid else {
            let lines = loaded.errors.map { "\(request.templatePath): \($0)" }
            return finishEarly(.failed("the template is not valid:\n" + lines.joined(separator: "\n")))
        }
        let candidates = loaded.templates.filter { request.name == nil || $0.template.name == request.name }
        guard candidates.count == 1, let chosen = candidates.first else {
            let names = loaded.templates.map(\.template.name).joined(separator: ", ")
            return finishEarly(.failed(request.name == nil ? "\(request.templatePath) holds \(loaded.templates.count) image templates (\(names)); choose one with --name"
                                                        : "expected an image template named \(request.name ?? "") in \(request.templatePath), found \(names)"))
        }
        let template = chosen.template
        record.templateName = request.createdTemplateName ?? template.name
        do {
            store = try StateStore.open(request.state)
        } catch {
            return finishEarly(.failed("\(error)"))
        }
        do {
            try FileManager.default.createDirectory(atPath: runDirectory + "/downloads", withIntermediateDirectories: true)
        } catch {
            return finishEarly(.failed("cannot create the run directory \(runDirectory): \(error.localizedDescription)"))
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

    private func enterPhase(_ subState: RunSubState, _ name: String) {
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

    private func persist() {
        record.write(to: runDirectory + "/run.json")
        do {
            try store?.saveRun(record, runDirectory: runDirectory, fromCreatedTemplate: request.createdTemplateName != nil)
        } catch {
            events(.warning("cannot record the run in the state database: \(error)"))
        }
    }

    private var keepVMOnError = false

    private func build(_ loaded: LoadedTemplate) async throws {
        let template = loaded.template
        let log = self.log ?? CustomizationLog(path: runDirectory + "/customization.log")
        enterPhase(.building, "resolve source")
        let catalog = try ImageCatalog.locate(state: request.state)
        let source: SourceImage
        switch template.properties.source {
        case .platformImage(let image):
            source = try await catalog.resolve(publisher: image.publisher, offer: image.offer, sku: image.sku, version: image.version) { [events] in
                events(.message($0))
            }
        case .managedImage(let id):
            guard let image = try storeOrFail().managedImage(id: id) else {
                throw Outcome.failed("properties.source.imageId: expected a managed image \(id) in the local store, found none (kiln image list shows the store)")
            }
            source = try SourceImage(stored: image.disk, reference: image.id, version: nil, path: "properties.source.imageId")
        case .sharedImageVersion(let id):
            let version: GalleryVersionRecord
            do {
                version = try storeOrFail().resolveGalleryVersion(id)
            } catch {
                throw Outcome.failed("properties.source.imageVersionId: \(error.message)")
            }
            if version.id.lowercased() != id.lowercased() {
                log.write("kiln", "\(id) resolved to \(version.id)")
                events(.message("source \(id) is \(version.id)"))
            }
            source = try SourceImage(stored: version.disk, reference: version.id, version: version.version.description,
                                     path: "properties.source.imageVersionId")
        }
        record.source = source.displayName
        log.write("kiln", "source: \(source.displayName) (\(source.path), \(source.format), \(source.firmware.rawValue))")
        let guestOS: OSType = source.osType.flatMap { OSType(rawValue: $0) } ?? template.declaredOSType ?? .linux
        let rules = GuestRules.check(loaded, osType: guestOS)
        if let problem = rules.first(where: { $0.severity == .error }) {
            throw Outcome.failed("\(request.templatePath): \(problem)")
        }
        guard guestOS == .linux else {
            throw Outcome.failed("Windows guests need the WinRM communicator, which this build of Kiln does not include")
        }

        let validate = template.properties.validate
        let sourceOnly = validate?.sourceValidationOnly == true
        let steps = sourceOnly ? [] : Array(zip(loaded.stepPaths.customize, template.properties.customize))
        let validations = Array(zip(loaded.stepPaths.inVMValidations, validate?.inVMValidations ?? []))

        let size = try VMSize.named(template.properties.vmProfile.vmSize)
        let decision = await AcceleratorProbe.decide(request.accelerator, cacheDirectory: request.state.path)
        log.write("kiln", "accelerator \(decision.accelerator.rawValue): \(decision.evidence)")
        events(.message("accelerator \(decision.accelerator.rawValue): \(decision.evidence)"))

        // Everything a step downloads is fetched and checked before the VM boots: a bad checksum costs no boot.
        enterPhase(.building, "fetch")
        let downloads = runDirectory + "/downloads"
        let prefetcher = StepRunner(connection: nil, log: log, events: events, downloads: downloads, guestOS: guestOS)
        for (index, (path, step)) in (steps + validations).enumerated() {
            try await prefetcher.prefetch(step, index: index, path: path.description)
        }

        enterPhase(.building, "boot")
        let options = MachineOptions(runID: record.runID, source: source, size: size, osDiskSizeGB: template.properties.vmProfile.osDiskSizeGB,
                                     accelerator: decision.accelerator, runDirectory: runDirectory, libvirtURI: request.libvirtURI,
                                     stateDirectory: request.state)
        let machine = try await BuildMachine.boot(options) { [events] message in
            log.write("kiln", message)
            events(.message(message))
        }
        self.machine = machine
        let session = try await machine.waitForSSH(timeout: request.sshTimeout)
        let sshTimeout = request.sshTimeout
        let connection = GuestConnection(session: session) { [weak machine] () async throws(KilnError) -> any GuestSession in
            guard let machine else { throw KilnError(.cancelled, "the build VM is gone") }
            return try await machine.waitForSSH(timeout: sshTimeout)
        }
        log.write("kiln", "SSH ready on 127.0.0.1:\(machine.sshPort) as \(machine.username)")
        let runner = StepRunner(connection: connection, log: log, events: events, downloads: downloads, guestOS: guestOS)

        if !steps.isEmpty {
            enterPhase(.customizing, "customize")
            for (index, (path, step)) in steps.enumerated() {
                try await runStep(runner, step, index: index, path: path.description, onError: request.onError ?? template.properties.errorHandling.onCustomizerError)
            }
        }

        var validationFailure: String?
        if !validations.isEmpty {
            enterPhase(.validating, "validate")
            for (offset, (path, step)) in validations.enumerated() {
                do {
                    try await runStep(runner, step, index: steps.count + offset, path: path.description,
                                      onError: request.onError ?? template.properties.errorHandling.onValidationError)
                } catch let failure as StepFailure {
                    validationFailure = failure.message
                    break
                }
            }
            if let validationFailure {
                guard validate?.continueDistributeOnFailure == true, !sourceOnly else {
                    throw Outcome.failed("validation failed: \(validationFailure)")
                }
                events(.warning("validation failed; distributing anyway (continueDistributeOnFailure): \(validationFailure)"))
            }
        }
        if sourceOnly {
            record.message = "source validation succeeded; nothing is distributed with sourceValidationOnly"
            await connection.close()
            return
        }

        enterPhase(.customizing, "deprovision")
        let hasOverride = try await connection.session.exec("test -f \(LinuxDeprovisioner.overrideScript)").succeeded
        let deprovision = LinuxDeprovisioner.deprovisionCommand(hasOverride: hasOverride)
        log.write("deprovision", hasOverride ? "running the template's \(LinuxDeprovisioner.overrideScript)" : "running AIB's default deprovisioning")
        log.write("deprovision", "command: \(deprovision)")
        let tail = OutputTail(lines: 20)
        let result = try await connection.session.exec(deprovision) { [events] chunk in
            for line in chunk.text.split(separator: "\n") {
                tail.append(String(line))
                log.write("deprovision", String(line))
                events(.output(customizer: "deprovision", stream: chunk.stream.rawValue, line: String(line)))
            }
        }
        log.write("deprovision", "\(result)")
        guard result.succeeded else {
            throw Outcome.failed("deprovisioning failed with \(result). Last output:\n\(tail.text)")
        }

        enterPhase(.customizing, "shutdown")
        log.write("kiln", "removing the build user \(machine.username), its key and home, and the SSH host keys; powering off")
        _ = try? await connection.session.exec(LinuxDeprovisioner.finalCleanup(username: machine.username))
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

    private func runStep(_ runner: StepRunner, _ step: Customizer, index: Int, path: String, onError: ErrorAction) async throws {
        let label = StepRunner.label(step, index: index)
        events(.customizerStarted(index: index, name: label, type: step.typeName))
        log?.write(label, "start \(step.typeName) (\(path))")
        let clock = ContinuousClock()
        let start = clock.now
        do {
            try await runner.run(step, index: index, path: path)
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

    private func distribute(_ template: ImageTemplate, machine: BuildMachine, source: SourceImage, guestOS: OSType,
                            log: CustomizationLog) async throws {
        let info = try await DiskImageProbe.inspect(machine.overlayPath)
        let distribution = Distribution(store: try storeOrFail(), runID: record.runID, runDirectory: runDirectory,
                                        templateLocation: template.location, source: source, guestOS: guestOS, log: log, events: events)
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
            kept = KeptVM(runID: record.runID, domainName: machine.options.domainName, sshPort: machine.sshPort,
                          username: machine.username, privateKeyPath: machine.privateKeyPath)
            record.message += "\nThe build VM is kept (errorHandling abort): \(kept?.sshCommand ?? "")"
        } else if let machine {
            await machine.teardown(keepFiles: false)
        }
        record.endTime = Date()
        log?.write("kiln", "runState \(record.runState.rawValue): \(record.message)")
        log?.close()
        try? FileManager.default.removeItem(atPath: runDirectory + "/downloads")
        persist()
        events(.finished(record))
        return BuildResult(record: record, runDirectory: runDirectory, keptVM: kept)
    }

    /// Tears down a VM kept after `abort`, when the caller is done with it.
    public func releaseKeptVM() async {
        await machine?.teardown(keepFiles: false)
    }
}
