import Foundation
import KilnCustomizers
import KilnMachine
import KilnSupport

/// Boots a Windows guest: the image prepared offline (answer file with a per-build Administrator password, WinRM
/// over HTTPS). Windows guests take no checkpoints (the plan says why): the build cache is Linux-only for now.
/// Cleanup tears the VM down unless errorHandling kept it.
struct WindowsBootStep: BuildStep {
    var name: String { "boot" }

    func run(_ build: BuildEngine, _ state: BuildState) async throws -> StepAction {
        let request = build.request
        let log = state.log
        let events = build.events
        guard let plan = state.plan, let accelerator = plan.accelerator?.accelerator else {
            throw KilnError(.internalError, "the plan of a Windows build has no accelerator")
        }
        if request.isolateNetwork {
            // A Windows guest fetches File uploads from Kiln's server on the host address.
            throw KilnError(.buildFailed, "--isolate-network: a Windows build fetches its File uploads from the host (10.0.2.2), which isolation blocks; build without it")
        }
        if let run = request.resumeRun {
            throw KilnError(.buildFailed, "--resume \(run): Windows builds take no checkpoints, so there is nothing to resume; build without --resume")
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
        let options = MachineOptions(runID: build.record.runID, source: plan.source, size: plan.size, osDiskSizeGB: plan.osDiskSizeGB,
                                     accelerator: accelerator, runDirectory: build.runDirectory, libvirtURI: request.libvirtURI,
                                     stateDirectory: request.state, windows: access)
        build.enterPhase(.building, "boot")
        build.machine = try await BuildMachine.boot(options) { message in
            log.write("kiln", message)
            events(.message(message))
        }
        return .proceed
    }

    func cleanup(_ build: BuildEngine) async {
        guard build.keptVM == nil else { return }
        await build.machine?.teardown(keepFiles: false)
        build.abandonPending()
    }
}

/// Waits for WinRM and readies the Windows customizers and Sysprep.
struct WindowsConnectStep: BuildStep {
    var name: String { "connect" }

    func run(_ build: BuildEngine, _ state: BuildState) async throws -> StepAction {
        let log = state.log
        guard let machine = build.machine, let access = machine.options.windows, let prefetcher = state.prefetcher else {
            throw KilnError(.internalError, "the connect step runs before the Windows guest booted")
        }
        let session = try await machine.waitForGuest(timeout: build.request.sshTimeout)
        log.write("kiln", "WinRM ready on https://127.0.0.1:\(machine.sshPort)/wsman as \(access.username)")
        build.events(.message("WinRM ready on https://127.0.0.1:\(machine.sshPort)/wsman"))
        let runner = WindowsStepRunner(session: session, log: log, events: build.progress, downloads: state.downloads, fetcher: prefetcher,
                                       administrator: (access.username, access.password))
        state.session = session
        state.guest = ConnectedGuest(run: { try await runner.run($0, index: $1, path: $2) },
                                     deprovisioner: WindowsDeprovisioner(runner: runner),
                                     close: { await session.close() })
        return .proceed
    }
}
