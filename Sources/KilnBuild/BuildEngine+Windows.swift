import Foundation
import KilnMachine
import KilnSupport
import KilnTemplate
import KilnWinRM

extension BuildEngine {
    /// A Windows build: the image prepared offline (answer file with a per-build Administrator password, WinRM
    /// over HTTPS), boot, WinRM, customizers, validation, Sysprep (or the template's script), power-off,
    /// distribution. Windows guests take no checkpoints: the build cache is Linux-only for now.
    func buildWindows(_ template: ImageTemplate, plan: BuildPlan, downloads: String, prefetcher: StepRunner, log: CustomizationLog) async throws {
        guard let accelerator = plan.accelerator?.accelerator else {
            throw KilnError(.internalError, "the plan of a Windows build has no accelerator")
        }
        if let run = request.resumeRun {
            throw Outcome.failed("--resume \(run): Windows builds take no checkpoints, so there is nothing to resume; build without --resume")
        }
        let environment = ProcessInfo.processInfo.environment
        let givenPassword = environment["KILN_WINRM_PASSWORD"].flatMap { $0.isEmpty ? nil : $0 }
        let username = environment["KILN_WINRM_USERNAME"].flatMap { $0.isEmpty ? nil : $0 } ?? "Administrator"
        let password = givenPassword ?? WindowsScripts.generatePassword()
        let access = WindowsAccess(username: username, password: password, passwordFromAnswerFile: givenPassword == nil,
                                   answerFile: WindowsScripts.unattend(administratorPassword: password),
                                   setupScript: WindowsScripts.enableWinRMHTTPS)
        log.write("kiln", "Windows guest: WinRM over HTTPS as \(username) (" + (givenPassword == nil ? "a per-build password set by the answer file" : "the password in KILN_WINRM_PASSWORD") + ")")
        if request.writeCheckpoints || request.useCache {
            log.write("kiln", "the build cache does not cover Windows guests: no checkpoints are read or written")
        }
        let options = MachineOptions(runID: record.runID, source: plan.source, size: plan.size, osDiskSizeGB: plan.osDiskSizeGB,
                                     accelerator: accelerator, runDirectory: runDirectory, libvirtURI: request.libvirtURI,
                                     stateDirectory: request.state, windows: access)
        enterPhase(.building, "boot")
        let machine = try await BuildMachine.boot(options) { [events] message in
            log.write("kiln", message)
            events(.message(message))
        }
        self.machine = machine
        let session = try await machine.waitForWinRM(timeout: request.sshTimeout)
        log.write("kiln", "WinRM ready on https://127.0.0.1:\(machine.sshPort)/wsman as \(username)")
        events(.message("WinRM ready on https://127.0.0.1:\(machine.sshPort)/wsman"))
        let runner = WindowsStepRunner(session: session, log: log, events: events, downloads: downloads, fetcher: prefetcher,
                                       administrator: (username, password))

        if !plan.customize.isEmpty {
            enterPhase(.customizing, "customize")
            for step in plan.customize {
                try await runStep(runner.run, step.customizer, index: step.index, path: step.path,
                                  onError: request.onError ?? template.properties.errorHandling.onCustomizerError)
            }
        }
        if try await runValidations(plan.validations, template: template, run: runner.run) {
            await session.close()
            return
        }

        enterPhase(.customizing, "deprovision")
        try await asBuildFailure { try await WindowsDeprovisioner(runner: runner).run() }

        enterPhase(.customizing, "shutdown")
        log.write("kiln", "powering off (shutdown /s /f /t 5), then removing Kiln's WinRM setup script, firewall rule, HTTPS listener and certificate")
        _ = try? await session.exec(WindowsScripts.powerOffCommand)
        await session.close()
        // A generalized guest is never forced off: a half-written image is worse than a failed build.
        guard await machine.waitForStop(timeout: .seconds(600)) else {
            throw Outcome.failed("the guest did not power off within 10m0s after deprovisioning; it was not forced off, and nothing is distributed")
        }

        enterPhase(.distributing, "distribute")
        try await distribute(template, machine: machine, source: plan.source, guestOS: .windows, log: log)
    }
}
