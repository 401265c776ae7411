/// A Windows build's last step, as AIB's: the template's C:\DeprovisioningScript.ps1 if a customizer wrote one,
/// else AIB's default Sysprep (WindowsScripts.deprovision); the build then powers the guest off itself.
public struct WindowsDeprovisioner: Deprovisioner {
    let runner: WindowsStepRunner

    public init(runner: WindowsStepRunner) {
        self.runner = runner
    }

    public func run() async throws {
        runner.log.write("deprovision", "running C:\\DeprovisioningScript.ps1 if the template wrote one, else AIB's default Sysprep")
        let (result, tail) = try await runner.stream(WindowsScripts.deprovision, label: "deprovision")
        guard result.succeeded else {
            throw StepFailure(message: "deprovisioning failed with \(result). Last output:\n\(tail.text)")
        }
    }
}
