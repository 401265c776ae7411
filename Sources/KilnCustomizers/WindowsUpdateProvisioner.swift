import Foundation
import KilnSupport
import KilnTemplate

/// AIB's WindowsUpdate customizer, as rgl/packer-plugin-windows-update runs it: rounds of the update script as
/// SYSTEM until one exits 0; exit 101 restarts the guest first. Windows guests only.
struct WindowsUpdateProvisioner: Provisioner {
    let model: WindowsUpdateCustomizer

    var name: String? { model.name }
    var typeName: String { "WindowsUpdate" }
    var packerName: String { "windows-update" }

    func run(windows runner: WindowsStepRunner, label: String, index: Int, path: String) async throws {
        let script = [0xEF, 0xBB, 0xBF] + Array(WindowsScripts.windowsUpdate(searchCriteria: model.searchCriteria, filters: model.filters,
                                                                             updateLimit: model.updateLimit).utf8)
        let local = runner.downloads + "/windows-update-\(UUID().uuidString.lowercased()).ps1"
        guard FileManager.default.createFile(atPath: local, contents: Data(script)) else { throw KilnError(.io, "cannot write \(local)") }
        defer { try? FileManager.default.removeItem(atPath: local) }
        let remote = WindowsScripts.tempDirectory + "\\kiln-windows-update.ps1"
        runner.log.write(label, "Windows Update: searchCriteria \(model.searchCriteria), filters \(model.filters.joined(separator: " ")), updateLimit \(model.updateLimit)")
        let maxRounds = 25
        for round in 1...maxRounds {
            // A restart may clean Temp: upload before every round.
            try await runner.uploadChecked(local, to: remote, label: label, path: path)
            runner.log.write(label, "Windows Update round \(round)")
            runner.events(.message("\(label): Windows Update round \(round)"))
            let (result, tail) = try await runner.runElevated(WindowsScripts.runScriptCommand(path: remote), asSystem: true, label: label, path: path,
                                                              what: "Windows Update round \(round)")
            switch result.outcome {
            case .exited(0):
                runner.log.write(label, "Windows Update finished after \(round) round\(round == 1 ? "" : "s")")
                return
            case .exited(let code) where WindowsScripts.updateNeedsRestart(code):
                runner.log.write(label, "Windows Update needs a restart (exit \(code))")
                try await runner.restart(command: WindowsScripts.rebootCommand, checkCommand: nil, timeout: runner.updateRestartTimeout,
                                         timeoutText: DurationText.format(runner.updateRestartTimeout), label: label, path: path)
            default:
                try runner.check((result, tail), validExitCodes: [0], label: label, path: path)
            }
        }
        throw StepFailure(message: "\(path) (\(label)): Windows Update still asked for a restart after \(maxRounds) rounds")
    }
}
