import Foundation
import KilnGuest
import KilnSupport
import KilnTemplate

/// The Windows form of the customizers (each type's own part is in its own file), over a WinRM session, as Packer's
/// powershell, file and windows-restart provisioners and the Windows Update plugin do: scripts go to
/// C:\Windows\Temp, elevated ones run through a scheduled task, restarts are followed until the guest has really
/// booted again.
public struct WindowsStepRunner: Sendable {
    let session: any GuestSession
    let log: any BuildLog
    let events: @Sendable (ProgressEvent) -> Void
    let downloads: String
    /// Fetches and verifies downloads (the same rules as on Linux).
    let fetcher: StepRunner
    /// The build's administrator, for elevated tasks that do not run as SYSTEM.
    let administrator: (name: String, password: String)
    /// How long Windows Update waits for each restart (the plugin's default: 4h).
    var updateRestartTimeout: Duration = .seconds(4 * 3600)
    /// How often a restart wait polls the guest.
    var pollInterval: Duration = .seconds(5)

    public init(session: any GuestSession, log: any BuildLog, events: @escaping @Sendable (ProgressEvent) -> Void, downloads: String,
                fetcher: StepRunner, administrator: (name: String, password: String)) {
        self.session = session
        self.log = log
        self.events = events
        self.downloads = downloads
        self.fetcher = fetcher
        self.administrator = administrator
    }

    public func run(_ step: Customizer, index: Int, path: String) async throws {
        try await run(step.provisioner, index: index, path: path)
    }

    /// Runs a step on this (Windows) guest, in its provisioner's Windows form.
    func run(_ provisioner: any Provisioner, index: Int, path: String) async throws {
        let label = StepRunner.label(name: provisioner.name, typeName: provisioner.typeName, index: index, path: path, labels: fetcher.labels)
        try await provisioner.run(windows: self, label: label, index: index, path: path)
    }

    /// `C:\a\b.txt` → `C:\a`; `C:\b.txt` → `C:\`.
    static func parentDirectory(_ path: String) -> String {
        let normalized = path.replacingOccurrences(of: "/", with: "\\")
        guard let slash = normalized.lastIndex(of: "\\") else { return "." }
        let parent = String(normalized[..<slash])
        return parent.hasSuffix(":") ? parent + "\\" : parent
    }

    func uploadChecked(_ local: String, to remote: String, label: String, path: String) async throws {
        do {
            try await session.upload(localPath: local, remotePath: remote)
        } catch {
            throw StepFailure(message: "\(path) (\(label)): \(error.message)")
        }
    }

    /// Runs `command` through a scheduled task at the highest run level (as SYSTEM or the build administrator).
    /// The wrapper is uploaded as a file: with the command inside it would not fit a cmd.exe line.
    func runElevated(_ command: String, asSystem: Bool, label: String, path: String, what: String) async throws -> (ExecResult, OutputTail) {
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

    func check(_ outcome: (ExecResult, OutputTail), validExitCodes: [Int], label: String, path: String) throws {
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
}
