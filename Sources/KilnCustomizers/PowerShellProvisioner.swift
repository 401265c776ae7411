import Foundation
import KilnGuest
import KilnSupport
import KilnTemplate

/// AIB's PowerShell customizer, as Packer's powershell provisioner runs it: on Windows the script goes to
/// C:\Windows\Temp and runs with `-ExecutionPolicy Bypass`, elevated ones through a scheduled task; on Linux it runs
/// through `pwsh`, which an earlier step must have installed.
struct PowerShellProvisioner: Provisioner {
    let model: PowerShellCustomizer

    var name: String? { model.name }
    var typeName: String { "PowerShell" }
    var packerName: String { "powershell" }

    var downloads: [ProvisionerDownload] {
        guard case .scriptUri(let uri) = model.script else { return [] }
        return [ProvisionerDownload(uri: uri, property: "scriptUri", checksum: model.sha256Checksum)]
    }

    func prefetch(_ runner: StepRunner, label: String, index: Int, path: String) async throws -> String? {
        guard case .scriptUri(let uri) = model.script else { return nil }
        return try await runner.fetchVerified(uri, checksum: model.sha256Checksum, label: label, path: path + ".scriptUri", name: "script_\(index).ps1").sha256
    }

    func run(linux runner: StepRunner, label: String, index: Int, path: String) async throws {
        let check = try await runner.session.exec("command -v pwsh")
        guard check.succeeded else {
            throw StepFailure(message: "\(path) (\(label)): expected PowerShell (pwsh) in the Linux guest to run a PowerShell customizer, found none; install it in an earlier Shell step")
        }
        let script = try await runner.materialize(model.script, checksum: model.sha256Checksum, label: label, path: path, index: index, fileExtension: "ps1")
        let elevate = model.runElevated ? "sudo -E " : ""
        try await runner.execute(script: script, runner: { "\(StepRunner.packerEnvironment)\(elevate)pwsh -NoProfile -NonInteractive -ExecutionPolicy Bypass -File \(ShellQuote.quote($0))" },
                                 validExitCodes: model.validExitCodes, label: label, index: index, path: path)
    }

    func run(windows runner: WindowsStepRunner, label: String, index: Int, path: String) async throws {
        let local = try await materialize(runner, label: label, path: path, index: index)
        let remote = WindowsScripts.tempDirectory + "\\script-\(UUID().uuidString.lowercased()).ps1"
        try await runner.uploadChecked(local, to: remote, label: label, path: path)
        let command = WindowsScripts.runScriptCommand(path: remote)
        let result: (ExecResult, OutputTail)
        if model.runElevated {
            result = try await runner.runElevated(command, asSystem: model.runAsSystem, label: label, path: path, what: "script \(remote)")
        } else {
            runner.log.write(label, "running \(remote) (powershell -ExecutionPolicy Bypass)")
            result = try await runner.stream(command, label: label)
        }
        _ = try? await runner.session.exec(PowerShell.commandLine("Remove-Item -LiteralPath \(PowerShell.quote(remote)) -Force -ErrorAction SilentlyContinue"))
        try runner.check(result, validExitCodes: model.validExitCodes, label: label, path: path)
    }

    private func materialize(_ runner: WindowsStepRunner, label: String, path: String, index: Int) async throws -> String {
        let local = runner.downloads + "/script_\(index).ps1"
        switch model.script {
        case .inline(let lines):
            // UTF-8 with a byte order mark: Windows PowerShell reads a BOM-less file in the ANSI code page.
            let body = [0xEF, 0xBB, 0xBF] + Array(WindowsScripts.inlineScript(lines).utf8)
            // As on Linux: the file is the user's alone, and the log names it without its text.
            try SecretFile.write(Data(body), to: local)
            runner.log.write(label, StepRunner.inlineScriptLogLine(lines: lines, local: local))
        case .scriptUri(let uri):
            if !FileManager.default.fileExists(atPath: local) {
                _ = try await runner.fetcher.fetchVerified(uri, checksum: model.sha256Checksum, label: label, path: path + ".scriptUri", name: "script_\(index).ps1")
            }
            runner.log.write(label, "script from \(uri)")
        }
        return local
    }
}
