import Foundation
import KilnSupport
import KilnTestSupport
import KilnWinRM
import Testing
@testable import KilnBuild
@testable import KilnCustomizers
@testable import KilnTemplate
@testable import KilnMachine

/// The Windows customizers' orchestration, against the WS-Management test server standing in for a guest. The
/// server has no PowerShell: `FakeWindowsGuest` recognises each script Kiln generates and runs a shell equivalent
/// (C:\ maps to a folder), restarts make the server refuse connections for a moment and change the boot time.
/// What this checks: which scripts run in which order, as whom, with which exit codes, how restarts and the
/// Windows Update loop are followed, and the failure messages. What PowerShell does with the scripts is checked
/// only on a real guest (scripts/test-windows).
@Suite(.serialized) struct WindowsStepRunnerTests {
    final class FakeWindowsGuest: @unchecked Sendable {
        let root: String
        let server: WinRMTestServer
        let downUntil = Locked(Date.distantPast)
        /// A restart command that does nothing: the guest never goes down.
        let stuck = Locked(false)

        init() throws {
            root = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-fake-windows-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: root + "/C/Windows/Temp", withIntermediateDirectories: true)
            try "1".write(toFile: root + "/boot", atomically: true, encoding: .utf8)
            server = try WinRMTestServer(auth: .ntlm, username: "Administrator", password: "Fake-Passw0rd'$")
            let downUntil = self.downUntil
            server.dropRequest = { _, _ in Date() < downUntil.current }
            server.translate = { [unowned self] line in self.translate(line) }
        }

        func stop() {
            server.stop()
            try? FileManager.default.removeItem(atPath: root)
        }

        func map(_ windowsPath: String) -> String {
            var path = windowsPath.replacingOccurrences(of: "\\", with: "/")
            if path.count >= 2, path.dropFirst().first == ":" { path = "/" + path.prefix(1).uppercased() + path.dropFirst(2) }
            return root + path
        }

        func lines(_ name: String) -> [String] {
            ((try? String(contentsOfFile: root + "/" + name, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
        }

        static func unquote(_ literal: Substring) -> String {
            String(literal.dropFirst().dropLast()).replacingOccurrences(of: "''", with: "'")
        }

        func translate(_ line: String) -> String {
            let hash = { (path: String) in "printf 'sha256:%s\\n' \"$(sha256sum '\(path)' | cut -c1-64)\"" }
            if line.hasPrefix("shutdown /r") {
                guard !stuck.current else { return "exit 0" }
                downUntil.withLock { $0 = Date().addingTimeInterval(1.5) }
                return "echo $(( $(cat '\(root)/boot') + 1 )) > '\(root)/boot'; echo restart >> '\(root)/events'"
            }
            if line.hasPrefix("shutdown /s") { return "echo poweroff >> '\(root)/events'" }
            guard let script = PowerShell.decode(commandLine: line) else { return line }
            if script.contains("LastBootUpTime") { return "printf 'boot:%s\\n' \"$(cat '\(root)/boot')\"" }
            if script.contains("restarted.' -f") { return "echo 'fakehost restarted.'" }
            if script.contains("Sysprep.exe") {
                return "if [ -f '\(map("C:\\DeprovisioningScript.ps1"))' ]; then echo 'override ran'; else echo '>>> Sysprep complete ...'; fi; echo deprovision >> '\(root)/events'"
            }
            if let dest = script.firstMatch(of: /\$dest = ('(?:[^']|'')*')/)?.1 {
                let path = map(Self.unquote(dest))
                if let url = script.firstMatch(of: /DownloadFile\('([^']*)'/)?.1 { return "curl -sf '\(url)' -o '\(path)' && \(hash(path))" }
                return "base64 -d > '\(path)' && \(hash(path))"
            }
            if let directory = script.firstMatch(of: /Test-Path -LiteralPath ('(?:[^']|'')*') -PathType Container/)?.1 {
                return "test -d '\(map(Self.unquote(directory)))'"
            }
            if let target = script.firstMatch(of: /Remove-Item -LiteralPath ('(?:[^']|'')*')/)?.1 {
                return "rm -f '\(map(Self.unquote(target)))'"
            }
            if let scriptPath = script.firstMatch(of: /& ('(?:[^']|'')*')/)?.1 {
                let file = map(Self.unquote(scriptPath))
                let content = (try? String(contentsOfFile: file, encoding: .utf8)) ?? ""
                if content.contains("Schedule.Service"), let command = content.firstMatch(of: /\$command = ('(?:[^']|'')*')/)?.1 {
                    let principal = content.contains("'SYSTEM', $null, 5") ? "SYSTEM"
                        : String(content.firstMatch(of: /RegisterTaskDefinition\(\$name, \$task, 6, '([^']*)'/)?.1 ?? "?")
                    return "echo '\(principal)' >> '\(root)/elevated'; " + translate(Self.unquote(command))
                }
                if content.contains("Microsoft.Update.Session") {
                    return """
                    n=$(cat '\(root)/update-rounds' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '\(root)/update-rounds'
                    if [ $n -lt 2 ]; then echo 'Selected Fake Update [KB123] (1.0 MB)'; echo 'Exiting with code 101'; exit 101; fi
                    echo 'No updates to install.'; echo 'Exiting with code 0'; exit 0
                    """
                }
                // A template's own script: its lines are shell-compatible in these tests; the wrapper lines go.
                return "sed -e '1s/^\\xEF\\xBB\\xBF//' -e '/^\\$ProgressPreference/d' -e 's/^exit \\$LASTEXITCODE$//' '\(file)' | sh"
            }
            return "echo 'unrecognised script' >&2; exit 99"
        }
    }

    struct Fixture {
        let guest: FakeWindowsGuest
        let runner: WindowsStepRunner
        let logPath: String
        let outputs: Locked<[String]>
    }

    static func fixture() throws -> Fixture {
        let guest = try FakeWindowsGuest()
        let downloads = guest.root + "/host-downloads"
        try FileManager.default.createDirectory(atPath: downloads, withIntermediateDirectories: true)
        let logPath = guest.root + "/customization.log"
        let log = CustomizationLog(path: logPath)
        let outputs = Locked<[String]>([])
        let events: @Sendable (ProgressEvent) -> Void = { event in
            if case .output(let customizer, _, let line) = event { outputs.withLock { $0.append("\(customizer): \(line)") } }
        }
        let client = WinRMClient(WinRMOptions(endpoint: try WinRMEndpoint(url: guest.server.url), username: "Administrator",
                                              password: guest.server.password, auth: .ntlm, operationTimeout: .seconds(5), retries: 1))
        var runner = WindowsStepRunner(session: WinRMSession(client: client, hostAddressForGuest: "127.0.0.1"), log: log, events: events,
                                       downloads: downloads,
                                       fetcher: StepRunner(connection: nil, log: log, events: events, downloads: downloads, guestOS: .windows),
                                       administrator: ("Administrator", guest.server.password))
        runner.pollInterval = .milliseconds(200)
        runner.updateRestartTimeout = .seconds(30)
        return Fixture(guest: guest, runner: runner, logPath: logPath, outputs: outputs)
    }

    static func restartStep(check: String?, timeout: String) -> Customizer {
        .windowsRestart(WindowsRestartCustomizer(name: "restart", restartCommand: WindowsRestartCustomizer.defaultRestartCommand,
                                                 restartCheckCommand: check, restartTimeout: timeout,
                                                 restartTimeoutDuration: DurationText.parse(timeout)!))
    }

    @Test func customizersRunInOrderAsTheRightPrincipal() async throws {
        let fixture = try Self.fixture()
        let guest = fixture.guest
        defer { guest.stop() }
        let runner = fixture.runner
        let scriptFile = guest.root + "/system.ps1"
        try "echo as system\nexit 3\n".write(toFile: scriptFile, atomically: true, encoding: .utf8)
        let payload = guest.root + "/payload.bin"
        try Data((0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }).write(to: URL(fileURLWithPath: payload))
        try FileManager.default.createDirectory(atPath: guest.map(#"C:\payload"#), withIntermediateDirectories: true)

        try await runner.run(.powerShell(PowerShellCustomizer(name: "plain", script: .inline(["echo hello from 'ps' ✓"]))), index: 0, path: "properties.customize[0]")
        try await runner.run(.powerShell(PowerShellCustomizer(name: "elevated", script: .inline(["echo elevated"]), runElevated: true)),
                             index: 1, path: "properties.customize[1]")
        try await runner.run(.powerShell(PowerShellCustomizer(name: "system", script: .scriptUri("file://" + scriptFile), runElevated: true,
                                                              runAsSystem: true, validExitCodes: [0, 3])),
                             index: 2, path: "properties.customize[2]")
        try await runner.run(.file(FileCustomizer(name: "payload", sourceUri: "file://" + payload, destination: #"C:\payload\data.bin"#)),
                             index: 3, path: "properties.customize[3]")
        try await runner.run(Self.restartStep(check: "echo checked", timeout: "1m"), index: 4, path: "properties.customize[4]")
        try await runner.run(.windowsUpdate(WindowsUpdateCustomizer(name: "updates", searchCriteria: "IsInstalled=0", filters: ["include:$true"],
                                                                   updateLimit: 40)),
                             index: 5, path: "properties.customize[5]")

        let outputs = fixture.outputs.current
        #expect(outputs.contains("plain: hello from ps ✓"))
        #expect(outputs.contains("elevated: elevated"))
        #expect(outputs.contains("system: as system"))
        #expect(outputs.contains("restart: checked"))
        #expect(outputs.contains("updates: Selected Fake Update [KB123] (1.0 MB)"))
        #expect(outputs.contains("updates: No updates to install."))
        #expect(guest.lines("elevated") == ["Administrator", "SYSTEM", "SYSTEM", "SYSTEM"])
        #expect(try Data(contentsOf: URL(fileURLWithPath: guest.map(#"C:\payload\data.bin"#))) == Data(contentsOf: URL(fileURLWithPath: payload)))
        // One restart for WindowsRestart, one between the two Windows Update rounds.
        #expect(guest.lines("events") == ["restart", "restart"])
        #expect(guest.lines("boot") == ["3"])
        #expect(guest.lines("update-rounds") == ["2"])
        // Scripts and wrappers are removed from C:\Windows\Temp after they ran.
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: guest.map(#"C:\Windows\Temp"#)).filter { $0.hasPrefix("script-") || $0.hasPrefix("kiln-elevated-") }
        #expect(leftovers.isEmpty, "\(leftovers)")
        let log = try String(contentsOfFile: fixture.logPath, encoding: .utf8)
        #expect(log.contains("the guest restarted (boot:1 → boot:2)"))
        #expect(log.contains("Windows Update round 2"))
        #expect(log.contains("highest run level, as SYSTEM"))
        // An inline script's text is not logged (it may hold a secret), its output is.
        #expect(log.contains("[plain] inline script (1 line) written to \(guest.root)/host-downloads/script_0.ps1"), "\(log)")
        #expect(!log.contains("echo hello from"))
        #expect(log.contains("[plain] PACKER OUT     azure-arm: hello from ps ✓"))
        // The administrator's password is never logged (it is inside the elevated wrapper, which is not).
        #expect(!log.contains(guest.server.password))
    }

    @Test func failuresNameTheStepAndWhatHappened() async throws {
        let fixture = try Self.fixture()
        let guest = fixture.guest
        defer { guest.stop() }
        let runner = fixture.runner

        await #expect { try await runner.run(.powerShell(PowerShellCustomizer(name: "fails", script: .inline(["echo about to fail", "exit 5"]))),
                                             index: 0, path: "properties.customize[0]") } throws: { error in
            let message = (error as? StepFailure)?.message ?? ""
            return message.contains("properties.customize[0] (fails) failed with exit code 5") && message.contains("about to fail")
        }
        let payload = guest.root + "/payload.bin"
        try Data("x".utf8).write(to: URL(fileURLWithPath: payload))
        await #expect { try await runner.run(.file(FileCustomizer(name: "nowhere", sourceUri: "file://" + payload, destination: #"C:\missing\x.bin"#)),
                                             index: 1, path: "properties.customize[1]") } throws: { error in
            ((error as? StepFailure)?.message ?? "").contains(#"properties.customize[1].destination (nowhere): expected the directory C:\missing to exist"#)
        }
        await #expect { try await runner.run(.shell(ShellCustomizer(name: "sh", script: .inline(["true"]))), index: 2, path: "properties.customize[2]") } throws: { error in
            ((error as? StepFailure)?.message ?? "").contains("Shell customizers need a Linux guest")
        }
        guest.stuck.withLock { $0 = true }
        let clock = ContinuousClock()
        let start = clock.now
        await #expect { try await runner.run(Self.restartStep(check: nil, timeout: "2s"), index: 3, path: "properties.customize[3]") } throws: { error in
            let message = (error as? StepFailure)?.message ?? ""
            return message.contains("properties.customize[3].restartTimeout (restart): the guest did not come back from the restart within 2s (waited ")
        }
        #expect(clock.now - start < .seconds(20))
    }

    @Test func parentDirectories() {
        #expect(WindowsStepRunner.parentDirectory(#"C:\a\b.txt"#) == #"C:\a"#)
        #expect(WindowsStepRunner.parentDirectory(#"C:\b.txt"#) == #"C:\"#)
        #expect(WindowsStepRunner.parentDirectory("C:/Windows/Temp/x.ps1") == #"C:\Windows\Temp"#)
    }
}

@Suite struct WindowsDomainTests {
    @Test func windowsGuestsGetInboxHardware() {
        var spec = DomainSpec(name: "kiln-w", accelerator: .tcg, vCPUs: 2, memoryMiB: 4096, firmware: .uefi, nvramPath: "/r/nvram.fd",
                              disks: [.init(path: "/r/disk.qcow2", format: "qcow2", readOnly: false, device: .sataDisk(target: "sda"))],
                              serialLogPath: "/r/console.log", portForwards: [.init(hostPort: 40000, guestPort: 5986)], windowsHardware: true)
        #expect(spec.xml.contains("<target dev='sda' bus='sata'/>"))
        #expect(spec.xml.contains("e1000e,netdev=kilnnet0"))
        #expect(spec.xml.contains("hostfwd=tcp:127.0.0.1:40000-:5986"))
        #expect(!spec.xml.contains("<hyperv>"))
        spec.accelerator = .kvm
        #expect(spec.xml.contains("<hyperv><relaxed state='on'/>"))
        spec.windowsHardware = false
        #expect(spec.xml.contains("virtio-net-pci,netdev=kilnnet0"))
    }

    @Test func imageStateFromStateINI() {
        let utf16: [UInt8] = [0xFF, 0xFE] + "[State]\r\nImageState=IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE\r\n".utf16.flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] }
        #expect(WindowsPreparation.imageState(fromStateINI: utf16) == "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE")
        #expect(WindowsPreparation.imageState(fromStateINI: Array("[State]\nImageState = IMAGE_STATE_COMPLETE\n".utf8)) == "IMAGE_STATE_COMPLETE")
        #expect(WindowsPreparation.imageState(fromStateINI: Array("[State]\n".utf8)) == nil)
    }
}
