import Foundation
import KilnGuest
import KilnSupport
import KilnTemplate
import KilnWinRM

/// Runs customizers on a Windows guest over WinRM, as Packer's powershell, file and windows-restart
/// provisioners and the Windows Update plugin do: scripts go to C:\Windows\Temp, elevated ones run through a
/// scheduled task, restarts are followed until the guest has really booted again.
struct WindowsStepRunner {
    let session: WinRMSession
    let log: CustomizationLog
    let events: @Sendable (BuildEvent) -> Void
    let downloads: String
    /// Fetches and verifies downloads (the same rules as on Linux).
    let fetcher: StepRunner
    /// The build's administrator, for elevated tasks that do not run as SYSTEM.
    let administrator: (name: String, password: String)
    /// How long Windows Update waits for each restart (the plugin's default: 4h).
    var updateRestartTimeout: Duration = .seconds(4 * 3600)
    /// How often a restart wait polls the guest.
    var pollInterval: Duration = .seconds(5)

    func run(_ step: Customizer, index: Int, path: String) async throws {
        let label = StepRunner.label(step, index: index, path: path, labels: fetcher.labels)
        switch step {
        case .shell:
            throw StepFailure(message: "\(path) (\(label)): Shell customizers need a Linux guest; use PowerShell on Windows")
        case .powerShell(let ps):
            let local = try await materialize(ps, label: label, path: path, index: index)
            let remote = WindowsScripts.tempDirectory + "\\script-\(UUID().uuidString.lowercased()).ps1"
            try await uploadChecked(local, to: remote, label: label, path: path)
            let command = WindowsScripts.runScriptCommand(path: remote)
            let result: (ExecResult, OutputTail)
            if ps.runElevated {
                result = try await runElevated(command, asSystem: ps.runAsSystem, label: label, path: path, what: "script \(remote)")
            } else {
                log.write(label, "running \(remote) (powershell -ExecutionPolicy Bypass)")
                result = try await stream(command, label: label)
            }
            _ = try? await session.exec(PowerShell.commandLine("Remove-Item -LiteralPath \(PowerShell.quote(remote)) -Force -ErrorAction SilentlyContinue"))
            try check(result, validExitCodes: ps.validExitCodes, label: label, path: path)
        case .file(let file):
            let local = downloads + "/file_\(index)"
            if !FileManager.default.fileExists(atPath: local) {
                try await fetcher.prefetch(step, index: index, path: path)
            }
            let directory = Self.parentDirectory(file.destination)
            let exists = try await session.exec(PowerShell.commandLine(
                "if (Test-Path -LiteralPath \(PowerShell.quote(directory)) -PathType Container) { exit 0 } else { exit 1 }"))
            guard exists.succeeded else {
                throw StepFailure(message: "\(path).destination (\(label)): expected the directory \(directory) to exist in the guest (AIB does not create it), found none")
            }
            log.write(label, "uploading \(file.sourceUri) to \(file.destination)")
            try await uploadChecked(local, to: file.destination, label: label, path: path)
            log.write(label, "uploaded to \(file.destination) (sha256 checked in the guest)")
        case .windowsRestart(let restart):
            try await self.restart(command: restart.restartCommand, checkCommand: restart.restartCheckCommand,
                                   timeout: restart.restartTimeoutDuration, timeoutText: restart.restartTimeout, label: label, path: path)
        case .windowsUpdate(let update):
            try await windowsUpdate(update, label: label, path: path)
        }
    }

    /// `C:\a\b.txt` → `C:\a`; `C:\b.txt` → `C:\`.
    static func parentDirectory(_ path: String) -> String {
        let normalized = path.replacingOccurrences(of: "/", with: "\\")
        guard let slash = normalized.lastIndex(of: "\\") else { return "." }
        let parent = String(normalized[..<slash])
        return parent.hasSuffix(":") ? parent + "\\" : parent
    }

    private func materialize(_ ps: PowerShellCustomizer, label: String, path: String, index: Int) async throws -> String {
        let local = downloads + "/script_\(index).ps1"
        switch ps.script {
        case .inline(let lines):
            // UTF-8 with a byte order mark: Windows PowerShell reads a BOM-less file in the ANSI code page.
            let body = [0xEF, 0xBB, 0xBF] + Array(WindowsScripts.inlineScript(lines).utf8)
            // As on Linux: the file is the user's alone, and the log names it without its text.
            try SecretFile.write(Data(body), to: local)
            log.write(label, StepRunner.inlineScriptLogLine(lines: lines, local: local))
        case .scriptUri(let uri):
            if !FileManager.default.fileExists(atPath: local) {
                _ = try await fetcher.fetchVerified(uri, checksum: ps.sha256Checksum, label: label, path: path + ".scriptUri", name: "script_\(index).ps1")
            }
            log.write(label, "script from \(uri)")
        }
        return local
    }

    private func uploadChecked(_ local: String, to remote: String, label: String, path: String) async throws {
        do {
            try await session.upload(localPath: local, remotePath: remote)
        } catch {
            throw StepFailure(message: "\(path) (\(label)): \(error.message)")
        }
    }

    /// Runs `command` through a scheduled task at the highest run level (as SYSTEM or the build administrator).
    /// The wrapper is uploaded as a file: with the command inside it would not fit a cmd.exe line.
    private func runElevated(_ command: String, asSystem: Bool, label: String, path: String, what: String) async throws -> (ExecResult, OutputTail) {
        let principal: WindowsScripts.Principal = asSystem ? .system : .user(name: administrator.name, password: administrator.password)
        let id = UUID().uuidString.lowercased()
        let local = downloads + "/elevated-\(id).ps1"
        let wrapper = [0xEF, 0xBB, 0xBF] + Array(WindowsScripts.elevated(command: command, principal: principal, id: id).utf8)
        // It holds the administrator's password.
        try SecretFile.write(Data(wrapper), to: local)
        defer { try? FileManager.default.removeItem(atPath: local) }
        let remote = WindowsScripts.tempDirectory + "\\kiln-elevated-\(id).ps1"
        try await uploadChecked(local, to: remote, label: label, path: path)
        // The wrapper holds the administrator's password: the log names the task, never the file's content.
        log.write(label, "running \(what) elevated: scheduled task kiln-elevated-\(id), highest run level, as \(asSystem ? "SYSTEM" : administrator.name)")
        let result = try await stream(WindowsScripts.runScriptCommand(path: remote), label: label)
        _ = try? await session.exec(PowerShell.commandLine("Remove-Item -LiteralPath \(PowerShell.quote(remote)) -Force -ErrorAction SilentlyContinue"))
        return result
    }

    /// Runs a command, each output line to the log and the event stream with the customizer's name.
    func stream(_ command: String, label: String) async throws -> (ExecResult, OutputTail) {
        let (result, tail) = try await StepOutput.exec(command, on: session, label: label, log: log, events: events)
        log.write(label, "\(result)")
        return (result, tail)
    }

    private func check(_ outcome: (ExecResult, OutputTail), validExitCodes: [Int], label: String, path: String) throws {
        let (result, tail) = outcome
        switch result.outcome {
        case .exited(let code):
            guard validExitCodes.contains(Int(code)) || validExitCodes.contains(Int(UInt32(bitPattern: code))) else {
                throw StepFailure(message: "\(path) (\(label)) failed with exit code \(code)"
                                  + (validExitCodes == [0] ? "" : " (valid: \(validExitCodes.map(String.init).joined(separator: ", ")))")
                                  + ". Last output:\n" + tail.text)
            }
        case .signaled(let signal):
            throw StepFailure(message: "\(path) (\(label)) was stopped (\(signal)). Last output:\n" + tail.text)
        case .disconnected(let reason):
            throw StepFailure(message: "\(path) (\(label)): the WinRM connection was lost before the script finished (\(reason)); "
                              + "to restart the guest, use a WindowsRestart customizer. Last output:\n" + tail.text)
        }
    }

    /// The guest's last boot time, or nil while it cannot be reached.
    private func bootIdentity() async -> String? {
        let collector = OutputCollector()
        guard let result = try? await session.exec(WindowsScripts.bootIdentity, output: { collector.append($0) }), result.succeeded else { return nil }
        return collector.stdoutText.split(whereSeparator: \.isNewline).last { $0.hasPrefix("boot:") }.map(String.init)
    }

    /// Restarts the guest and waits until it has booted again (its boot time changed) and answers the check
    /// command and Packer's "restarted." probe, all within `timeout`.
    func restart(command: String, checkCommand: String?, timeout: Duration, timeoutText: String, label: String, path: String) async throws {
        let clock = ContinuousClock()
        let start = clock.now
        guard let before = await bootIdentity() else {
            throw StepFailure(message: "\(path) (\(label)): cannot read the guest's boot time before restarting")
        }
        log.write(label, "restarting: \(command) (\(before))")
        events(.message("\(label): restarting the guest"))
        let (result, tail) = try await stream(command, label: label)
        if let code = result.exitCode, ![0, 1115, 1190].contains(code) {
            throw StepFailure(message: "\(path).restartCommand (\(label)): `\(command)` exited with \(code). Last output:\n" + tail.text)
        }
        func overdue() -> StepFailure {
            StepFailure(message: "\(path).restartTimeout (\(label)): the guest did not come back from the restart within \(timeoutText) "
                        + "(waited \(DurationText.format(clock.now - start)))")
        }
        var lastReport = start
        while true {
            try Task.checkCancellation()
            if let now = await bootIdentity(), now != before {
                log.write(label, "the guest restarted (\(before) → \(now)) after \(DurationText.format(clock.now - start))")
                events(.message("\(label): the guest restarted"))
                break
            }
            guard clock.now - start < timeout else { throw overdue() }
            if clock.now - lastReport >= .seconds(60) {
                log.write(label, "waiting for the guest to restart (\(DurationText.format(clock.now - start)) of \(timeoutText))")
                lastReport = clock.now
            }
            try await Task.sleep(for: pollInterval)
        }
        if let checkCommand {
            while true {
                let (result, _) = try await stream(checkCommand, label: label)
                if result.exitCode != nil { break }
                guard clock.now - start < timeout else { throw overdue() }
                try await Task.sleep(for: pollInterval)
            }
        }
        while true {
            let collector = OutputCollector()
            if let result = try? await session.exec(WindowsScripts.restartedProbe, output: { collector.append($0) }), result.succeeded,
               collector.stdoutText.contains("restarted.") {
                log.write(label, collector.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines))
                return
            }
            guard clock.now - start < timeout else { throw overdue() }
            try await Task.sleep(for: pollInterval)
        }
    }

    /// Windows Update rounds as SYSTEM until a round exits 0; exit 101 restarts the guest first.
    private func windowsUpdate(_ update: WindowsUpdateCustomizer, label: String, path: String) async throws {
        let script = [0xEF, 0xBB, 0xBF] + Array(WindowsScripts.windowsUpdate(searchCriteria: update.searchCriteria, filters: update.filters,
                                                                             updateLimit: update.updateLimit).utf8)
        let local = downloads + "/windows-update-\(UUID().uuidString.lowercased()).ps1"
        guard FileManager.default.createFile(atPath: local, contents: Data(script)) else { throw KilnError(.io, "cannot write \(local)") }
        defer { try? FileManager.default.removeItem(atPath: local) }
        let remote = WindowsScripts.tempDirectory + "\\kiln-windows-update.ps1"
        log.write(label, "Windows Update: searchCriteria \(update.searchCriteria), filters \(update.filters.joined(separator: " ")), updateLimit \(update.updateLimit)")
        let maxRounds = 25
        for round in 1...maxRounds {
            // A restart may clean Temp: upload before every round.
            try await uploadChecked(local, to: remote, label: label, path: path)
            log.write(label, "Windows Update round \(round)")
            events(.message("\(label): Windows Update round \(round)"))
            let (result, tail) = try await runElevated(WindowsScripts.runScriptCommand(path: remote), asSystem: true, label: label, path: path,
                                                       what: "Windows Update round \(round)")
            switch result.outcome {
            case .exited(0):
                log.write(label, "Windows Update finished after \(round) round\(round == 1 ? "" : "s")")
                return
            case .exited(let code) where WindowsScripts.updateNeedsRestart(code):
                log.write(label, "Windows Update needs a restart (exit \(code))")
                try await restart(command: WindowsScripts.rebootCommand, checkCommand: nil, timeout: updateRestartTimeout,
                                  timeoutText: DurationText.format(updateRestartTimeout), label: label, path: path)
            default:
                try check((result, tail), validExitCodes: [0], label: label, path: path)
            }
        }
        throw StepFailure(message: "\(path) (\(label)): Windows Update still asked for a restart after \(maxRounds) rounds")
    }
}
