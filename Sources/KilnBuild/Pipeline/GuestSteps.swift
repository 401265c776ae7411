import KilnCustomizers
import KilnMachine
import KilnSupport
import KilnTemplate

/// One customizer, on whichever guest the connect step readied; on a Linux guest, followed by its checkpoint.
/// A customizer a resumed checkpoint already holds is skipped.
struct CustomizeStep: BuildStep {
    let planned: BuildPlan.PlannedStep

    var name: String { "customize[\(planned.index)]" }

    func run(_ build: BuildEngine, _ state: BuildState) async throws -> StepAction {
        guard let guest = state.guest else { throw KilnError(.internalError, "a customizer runs before the guest is connected") }
        let checkpoints = state.checkpoints
        if let checkpoints, planned.index < checkpoints.firstStep { return .proceed }
        if !state.customizing {
            state.customizing = true
            build.enterPhase(.customizing, "customize")
        }
        try await build.runStep(guest.run, planned.customizer, index: planned.index, path: planned.path,
                                onError: build.request.onError ?? state.template.properties.errorHandling.onCustomizerError)
        if let checkpoints, let connection = checkpoints.connection, let machine = build.machine {
            let (keys, index) = (checkpoints.keys, planned.index)
            if let checkpoint = try await build.takeCheckpoint(checkpoints.cache, key: keys[index + 1], nextKey: index + 2 < keys.count ? keys[index + 2] : nil,
                                                               parent: checkpoints.parent, step: index, label: planned.label, machine: machine,
                                                               connection: connection, templateName: state.template.name) {
                checkpoints.parent = checkpoint
            }
        }
        return .proceed
    }
}

/// `validate.inVMValidations`; a sourceValidationOnly build ends here, distributing nothing.
struct ValidateStep: BuildStep {
    var name: String { "validate" }

    func run(_ build: BuildEngine, _ state: BuildState) async throws -> StepAction {
        guard let plan = state.plan, let guest = state.guest else { throw KilnError(.internalError, "validation runs before the guest is connected") }
        if try await build.runValidations(plan.validations, template: state.template, run: guest.run) {
            await guest.close()
            return .halt
        }
        return .proceed
    }
}

/// The guest's deprovisioner (waagent or the template's script on Linux, Sysprep or the template's script on Windows).
struct DeprovisionStep: BuildStep {
    var name: String { "deprovision" }

    func run(_ build: BuildEngine, _ state: BuildState) async throws -> StepAction {
        guard let guest = state.guest else { throw KilnError(.internalError, "deprovisioning runs before the guest is connected") }
        build.enterPhase(.customizing, "deprovision")
        try await build.asBuildFailure { try await guest.deprovisioner.run() }
        return .proceed
    }
}

/// Waits for the deprovisioned guest to power off. A Linux guest's final cleanup powers it off itself (ACPI only if
/// it does not); a generalized Windows guest is told to and never forced off: a half-written image is worse than a
/// failed build.
struct PowerOffStep: BuildStep {
    let guestOS: OSType

    var name: String { "power off" }

    func run(_ build: BuildEngine, _ state: BuildState) async throws -> StepAction {
        guard let guest = state.guest, let machine = build.machine else { throw KilnError(.internalError, "power-off runs before the guest is connected") }
        build.enterPhase(.customizing, "shutdown")
        switch guestOS {
        case .linux:
            state.log.write("kiln", "removing the build user \(machine.username), its key and home, and the SSH host keys; powering off")
            await guest.close()
            let stopped = await machine.waitForStop(timeout: .seconds(180))
            let clean = stopped ? true : await machine.shutdown(session: nil, timeout: .seconds(120))
            guard clean else {
                throw KilnError(.buildFailed, "the guest did not power off within 5m0s after deprovisioning; it was forced off and its disk may be inconsistent")
            }
        case .windows:
            state.log.write("kiln", "powering off (shutdown /s /f /t 5), then removing Kiln's WinRM setup script, firewall rule, HTTPS listener and certificate")
            _ = try? await state.session?.exec(WindowsScripts.powerOffCommand)
            await guest.close()
            guard await machine.waitForStop(timeout: .seconds(600)) else {
                throw KilnError(.buildFailed, "the guest did not power off within 10m0s after deprovisioning; it was not forced off, and nothing is distributed")
            }
        }
        return .proceed
    }
}

/// Writes every distribution target from the powered-off guest's disk.
struct DistributeStep: BuildStep {
    var name: String { "distribute" }

    func run(_ build: BuildEngine, _ state: BuildState) async throws -> StepAction {
        guard let plan = state.plan, let machine = build.machine else { throw KilnError(.internalError, "distribution runs before the guest booted") }
        build.enterPhase(.distributing, "distribute")
        try await build.distribute(state.template, machine: machine, source: plan.source, guestOS: plan.guestOS, log: state.log)
        return .proceed
    }
}
