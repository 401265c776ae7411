import KilnTemplate

/// AIB's WindowsRestart customizer, as Packer's windows-restart provisioner runs it: the restart command, then a
/// wait until the guest has booted again, answers the check command and Packer's "restarted." probe, all within
/// restartTimeout. Windows guests only.
struct WindowsRestartProvisioner: Provisioner {
    let model: WindowsRestartCustomizer

    var name: String? { model.name }
    var typeName: String { "WindowsRestart" }
    var packerName: String { "windows-restart" }

    func run(windows runner: WindowsStepRunner, label: String, index: Int, path: String) async throws {
        try await runner.restart(command: model.restartCommand, checkCommand: model.restartCheckCommand,
                                 timeout: model.restartTimeoutDuration, timeoutText: model.restartTimeout, label: label, path: path)
    }
}
