import KilnCustomizers
import KilnGuest
import KilnMachine
import KilnStore
import KilnSupport

/// Prepares the workspace and boots a Linux guest, or resumes it from the longest matching chain of checkpoints
/// (the boot's overlay goes straight into the first checkpoint's folder); cleanup tears the VM down unless
/// errorHandling kept it.
struct LinuxBootStep: BuildStep {
    var name: String { "boot or resume" }

    func run(_ build: BuildEngine, _ state: BuildState) async throws -> StepAction {
        let request = build.request
        let log = state.log
        let events = build.events
        guard let plan = state.plan, let accelerator = plan.accelerator, let keys = plan.checkpointKeys else {
            throw KilnError(.internalError, "the plan of a Linux build holds no checkpoint keys after its downloads were fetched")
        }
        var options = MachineOptions(runID: build.record.runID, source: plan.source, size: plan.size, osDiskSizeGB: plan.osDiskSizeGB,
                                     accelerator: accelerator.accelerator, runDirectory: build.runDirectory, libvirtURI: request.libvirtURI,
                                     stateDirectory: request.state, username: plan.username)
        options.isolateNetwork = request.isolateNetwork
        options.instanceMetadata = plan.instanceMetadata
        options.remote = request.remote
        build.record.host = request.remote?.host
        let cache = CheckpointCache(state: request.state)
        // On a remote host the checkpoints' volumes stay in its pool and their folders here (keyed by that host).
        build.checkpointsEnabled = request.writeCheckpoints

        var within: Set<String>?
        if let run = request.resumeRun {
            let folders = RunRecord.read(from: request.state.runsPath + "/\(run)/run.json")?.checkpoints ?? []
            within = Set(folders)
            events(.message("resuming run \(run): \(folders.count) checkpoint(s) of it are candidates"))
        }
        if request.useCache || within != nil,
           let resumed = await build.resumeFromCache(cache, keys: keys, within: within, options: options, steps: plan.customize, log: log) {
            build.machine = resumed.machine
            state.session = resumed.session
            state.checkpoints = CheckpointChain(cache: cache, keys: keys, parent: resumed.entry, firstStep: resumed.position, resumed: true)
            return .proceed
        } else if Task.isCancelled {
            throw CancellationError()
        } else if let run = request.resumeRun {
            throw KilnError(.buildFailed, "--resume \(run): no checkpoint of run \(run) matches \(request.templatePath) (a customizer before the one that failed changed, the source or VM profile changed, or its checkpoints were pruned); build without --resume")
        }
        options.overlayPath = build.beginCheckpoint(cache, key: keys[0])
        state.checkpoints = CheckpointChain(cache: cache, keys: keys, parent: nil, firstStep: 0, resumed: false)
        build.enterPhase(.building, "boot")
        let machine = try await Self.boot(options, fallbackHosts: request.fallbackHosts, autoAccelerator: request.accelerator == .auto,
                                          build: build, log: log)
        build.machine = machine
        state.session = try await machine.waitForGuest(timeout: request.sshTimeout)
        return .proceed
    }

    /// Boots the build VM; on a remote host that cannot start it (its pool too full for the source, its libvirt or
    /// QEMU refusing the domain, the host gone), on the next of `fallbackHosts`, with a notice. What the failed
    /// start made there is gone with it (`BuildMachine.boot` tears down on failure). A guest that then does not
    /// answer is the image's matter, not the host's: that is not retried elsewhere.
    static func boot(_ options: MachineOptions, fallbackHosts: [RemoteHost], autoAccelerator: Bool, build: BuildEngine,
                     log: CustomizationLog) async throws -> BuildMachine {
        let events = build.events
        let say: @Sendable (String) -> Void = { message in
            log.write("kiln", message)
            events(.message(message))
        }
        var options = options
        var next = fallbackHosts[...]
        while true {
            do {
                return try await BuildMachine.boot(options, events: say)
            } catch {
                guard let failed = options.remote, let host = next.popFirst(), error.code != .cancelled, !Task.isCancelled else { throw error }
                let notice = "host \(failed.host) could not start the build: \(error.message); trying host \(host.host)"
                log.write("kiln", notice)
                events(.warning(notice))
                options.remote = host
                options.libvirtURI = host.uri
                // The checkpoint keys name the first host, whose pool would keep the volumes: none on this one.
                options.overlayPath = nil
                build.abandonPending()
                build.disableCheckpoints(after: KilnError(.invalidState, "the build moved to \(host.host), and its checkpoint keys name \(failed.host)"))
                if autoAccelerator {
                    let decision = try await host.acceleratorDecision()
                    options.accelerator = decision.accelerator
                    say("accelerator on \(host.host) \(decision.accelerator.rawValue): \(decision.evidence)")
                }
                build.record.host = host.host
                build.persist()
                try? HostPlacements(state: build.request.state).record(runID: build.record.runID, uri: host.uri)
            }
        }
    }

    func cleanup(_ build: BuildEngine) async {
        guard build.keptVM == nil else { return }
        await build.machine?.teardown(keepFiles: false)
        build.abandonPending()
    }
}

/// Holds the SSH session (renewed when a step reboots the guest) and readies the Linux customizers; after a fresh
/// boot, writes AIB's default deprovisioning script and takes the boot checkpoint.
struct LinuxConnectStep: BuildStep {
    var name: String { "connect" }

    /// What the builder's provisioning may have left in the guest for the Azure agents, for the final cleanup:
    /// Kiln's DHCP leases and cloud-init's copy of the provisioning media's ovf-env.xml (it holds the build user and
    /// key; the agent's deprovisioning deletes it, a template's own script may not).
    static let provisioningFiles = DHCPLease.allPaths + ["/var/lib/waagent/ovf-env.xml"]

    func run(_ build: BuildEngine, _ state: BuildState) async throws -> StepAction {
        let request = build.request
        let log = state.log
        guard let plan = state.plan, let machine = build.machine, let session = state.session, let checkpoints = state.checkpoints else {
            throw KilnError(.internalError, "the connect step runs before the guest booted")
        }
        let sshTimeout = request.sshTimeout
        let connection = GuestConnection(session: session, reconnectTimeout: sshTimeout) { [weak machine] () async throws(KilnError) -> any GuestSession in
            guard let machine else { throw KilnError(.cancelled, "the build VM is gone") }
            return try await machine.waitForGuest(timeout: sshTimeout)
        }
        log.write("kiln", "SSH ready on 127.0.0.1:\(machine.sshPort) as \(machine.username)")
        var runner = StepRunner(connection: connection, log: log, events: build.progress, downloads: state.downloads, guestOS: plan.guestOS,
                                offline: state.offlineCache, labels: state.loaded.stepLabels)
        let errorHandling = state.template.properties.errorHandling
        runner.keepFailedScripts = (request.onError ?? errorHandling.onCustomizerError) == .abort
            || (request.onError ?? errorHandling.onValidationError) == .abort
        let customizers = runner
        state.guest = ConnectedGuest(run: { try await customizers.run($0, index: $1, path: $2) },
                                     deprovisioner: LinuxDeprovisioner(connection: connection, username: machine.username,
                                                                       provisioningFiles: Self.provisioningFiles, log: log, events: build.progress),
                                     close: { await connection.close() })
        checkpoints.connection = connection
        if !checkpoints.resumed {
            try await build.asBuildFailure { try await LinuxDeprovisioner.writeDefaultScript(connection.session) }
            log.write("kiln", "wrote AIB's default \(LinuxDeprovisioner.scriptPath) (a customizer may replace it)")
            checkpoints.parent = try await build.takeCheckpoint(checkpoints.cache, key: checkpoints.keys[0],
                                                                nextKey: checkpoints.keys.count > 1 ? checkpoints.keys[1] : nil, parent: nil, step: nil,
                                                                label: "boot", machine: machine, connection: connection, templateName: state.template.name)
        }
        return .proceed
    }
}
