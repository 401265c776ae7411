import Foundation
import KilnGuest
import KilnSupport
import KilnTestSupport
import Testing
@testable import KilnBuild
@testable import KilnCustomizers
@testable import KilnTemplate

/// The Linux step runner against a stand-in session: what it uploads, the commands it runs (as AIB runs Packer's
/// shell provisioner), what it removes afterwards, and how it follows a reboot, without a VM.
@Suite("Linux customizers (stand-in guest)")
struct LinuxStepRunnerTests {
    /// A guest session that answers from a script: each command is recorded with its standard input, and
    /// `respond` decides the output and outcome. A closed session answers nothing (as an SSH session that the
    /// old boot's sshd dropped).
    final class StandInSession: GuestSession, @unchecked Sendable {
        struct Call { var command: String; var stdin: [UInt8]? }
        let bootID: String
        private let lock = NSLock()
        private var _calls: [Call] = []
        private var _uploads: [(local: String, remote: String)] = []
        var respond: @Sendable (String) -> (stdout: String, outcome: ExecResult.Outcome)
        /// Sessions that drop every command (a login on a guest going down).
        let dropsEverything: Bool

        init(bootID: String, dropsEverything: Bool = false,
             respond: @escaping @Sendable (String) -> (stdout: String, outcome: ExecResult.Outcome) = { _ in ("", .exited(0)) }) {
            self.bootID = bootID
            self.dropsEverything = dropsEverything
            self.respond = respond
        }

        var calls: [Call] { lock.withLock { _calls } }
        var uploads: [(local: String, remote: String)] { lock.withLock { _uploads } }

        func exec(_ command: String, stdin: [UInt8]?, output: @escaping @Sendable (OutputChunk) -> Void) async throws(KilnError) -> ExecResult {
            lock.withLock { _calls.append(Call(command: command, stdin: stdin)) }
            if dropsEverything { return ExecResult(.disconnected("session closed")) }
            if command == "cat /proc/sys/kernel/random/boot_id" {
                output(OutputChunk(stream: .stdout, bytes: Array((bootID + "\n").utf8)))
                return ExecResult(.exited(0))
            }
            let (stdout, outcome) = respond(command)
            if !stdout.isEmpty { output(OutputChunk(stream: .stdout, bytes: Array(stdout.utf8))) }
            return ExecResult(outcome)
        }

        func upload(localPath: String, remotePath: String) async throws(KilnError) {
            lock.withLock { _uploads.append((localPath, remotePath)) }
        }

        func close() async {}
    }

    struct Fixture {
        let folder: String
        let log: CustomizationLog
        let outputs: Locked<[String]>

        init() throws {
            folder = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-steps-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: folder + "/downloads", withIntermediateDirectories: true)
            log = CustomizationLog(path: folder + "/customization.log")
            outputs = Locked([])
        }

        func runner(_ connection: GuestConnection) -> StepRunner {
            let outputs = self.outputs
            return StepRunner(connection: connection, log: log, events: { event in
                if case .output(let customizer, _, let line) = event { outputs.withLock { $0.append("\(customizer): \(line)") } }
            }, downloads: folder + "/downloads", guestOS: .linux)
        }

        var logText: String { (try? String(contentsOfFile: folder + "/customization.log", encoding: .utf8)) ?? "" }

        func remove() { try? FileManager.default.removeItem(atPath: folder) }
    }

    static func connection(_ first: StandInSession, then next: [StandInSession] = []) -> GuestConnection {
        let queue = Locked(next)
        return GuestConnection(session: first, reconnectTimeout: .seconds(30)) { () async throws(KilnError) -> any GuestSession in
            guard let session = queue.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else {
                throw KilnError(.timeout, "Timeout waiting for SSH")
            }
            return session
        }
    }

    /// The script command a call ran: the one that starts with chmod.
    static func scriptCall(_ session: StandInSession) -> StandInSession.Call? {
        session.calls.first { $0.command.hasPrefix("chmod +x ") }
    }

    @Test func aCancelledDownloadIsACancellationNotAFailedStep() async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        let server = try ScriptedHTTPServer { _, connection in
            guard connection.send("HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\nConnection: close\r\n\r\n") else { return }
            while connection.send([UInt8](repeating: 0x41, count: 1024)) { Thread.sleep(forTimeInterval: 0.05) }
        }
        defer { server.stop() }
        let prefetcher = StepRunner(connection: nil, log: fixture.log, events: { _ in }, downloads: fixture.folder + "/downloads", guestOS: .linux)
        let step = Customizer.file(FileCustomizer(name: "big", sourceUri: server.url("/big.iso"), destination: "/tmp/big.iso"))
        let task = Task { try await prefetcher.prefetch(step, index: 0, path: "properties.customize[0]") }
        try await Task.sleep(for: .milliseconds(500))
        task.cancel()
        do {
            _ = try await task.value
            Issue.record("expected the download to be cancelled")
        } catch {
            #expect((error as? KilnError)?.code == .cancelled, "\(error)")
        }
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: fixture.folder + "/downloads")) ?? []).isEmpty)
    }

    @Test func aScriptUriScriptRunsAsRootThroughSudoAndIsRemoved() async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        let script = fixture.folder + "/motd.sh"
        try "cat >> /etc/motd << EOF\nbanner\nEOF\n".write(toFile: script, atomically: true, encoding: .utf8)
        let session = StandInSession(bootID: "boot-1") { command in
            command.hasPrefix("chmod +x ") ? ("hello from the script\n", .exited(0)) : ("", .exited(0))
        }
        let connection = Self.connection(session)
        let step = Customizer.shell(ShellCustomizer(name: "RunScriptFromSource", script: .scriptUri("file://" + script)))
        try await fixture.runner(connection).run(step, index: 0, path: "properties.customize[0]")

        let upload = try #require(session.uploads.first)
        #expect(upload.remote.wholeMatch(of: /\/tmp\/script_[0-9]{1,4}\.sh/) != nil, "Packer's remote name: \(upload.remote)")
        let call = try #require(Self.scriptCall(session))
        #expect(call.command == "chmod +x '\(upload.remote)'; PACKER_BUILDER_TYPE='azure-arm' PACKER_BUILD_NAME='azure-arm' sudo -E sh '\(upload.remote)'")
        #expect(call.stdin == [], "standard input is at end of file at once, as Packer's")
        #expect(session.calls.last?.command == "rm -f '\(upload.remote)'", "the script is removed after it ran")
        #expect(connection.placedFiles.isEmpty)
        #expect(fixture.outputs.withLock { $0 } == ["RunScriptFromSource: hello from the script"])
        let log = fixture.logText
        #expect(log.contains("[RunScriptFromSource] PACKER OUT ==> azure-arm: Provisioning with shell script: \(fixture.folder)/downloads/script_0.sh"))
        #expect(log.contains("[RunScriptFromSource] PACKER OUT     azure-arm: hello from the script"))
        #expect(log.contains("[DEBUG] starting remote command: chmod +x '\(upload.remote)'"))
        #expect(log.contains("[INFO] RPC client: Communicator ended with: 0"))
        #expect(log.firstMatch(of: /\[RunScriptFromSource\] PACKER ERR \d{4}\/\d{2}\/\d{2} \d{2}:\d{2}:\d{2} \[INFO\]/) != nil)
    }

    @Test func inlineLinesRunAsTheBuildUserInOneScript() async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        let session = StandInSession(bootID: "boot-1")
        let step = Customizer.shell(ShellCustomizer(name: "setupBuildPath", script: .inline(["sudo mkdir /buildArtifacts", "sudo cp /tmp/index.html /buildArtifacts/"])))
        try await fixture.runner(Self.connection(session)).run(step, index: 3, path: "properties.customize[3]")

        let upload = try #require(session.uploads.first)
        let body = try String(contentsOfFile: upload.local, encoding: .utf8)
        #expect(body == "#!/bin/sh -e\nsudo mkdir /buildArtifacts\nsudo cp /tmp/index.html /buildArtifacts/\n", "Packer's inline_shebang")
        let call = try #require(Self.scriptCall(session))
        #expect(call.command == "chmod +x '\(upload.remote)'; PACKER_BUILDER_TYPE='azure-arm' PACKER_BUILD_NAME='azure-arm'  '\(upload.remote)'",
                "Packer's default execute_command, as AIB's log shows it (no sudo)")
    }

    @Test("customization.log names an inline script's file, not its text; its output is logged")
    func inlineTextIsNotLogged() async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        let session = StandInSession(bootID: "boot-1") { command in
            command.hasPrefix("chmod +x ") ? ("s3cr3t-token\n", .exited(0)) : ("", .exited(0))
        }
        let step = Customizer.shell(ShellCustomizer(name: "token", script: .inline(["echo s3cr3t-token", "curl -H 'Authorization: Bearer s3cr3t-token' https://example.invalid"])))
        try await fixture.runner(Self.connection(session)).run(step, index: 2, path: "properties.customize[2]")

        let upload = try #require(session.uploads.first)
        let log = fixture.logText
        #expect(!log.contains("echo s3cr3t-token"), "\(log)")
        #expect(!log.contains("Authorization"))
        #expect(log.contains("[token] PACKER OUT     azure-arm: s3cr3t-token"), "the output is logged")
        #expect(log.contains("[token] inline script (2 lines) written to \(fixture.folder)/downloads/script_2.sh"))
        #expect(log.contains("[token] running: chmod +x '\(upload.remote)'"), "the uploaded script's path")
        var info = stat()
        #expect(lstat(upload.local, &info) == 0 && info.st_mode & 0o777 == 0o600, "the script file is the user's alone")
    }

    @Test func aFailedScriptIsRemovedUnlessItsVMIsKept() async throws {
        for keep in [false, true] {
            let fixture = try Fixture()
            defer { fixture.remove() }
            let session = StandInSession(bootID: "boot-1") { command in
                command.hasPrefix("chmod +x ") ? ("before\n", .exited(3)) : ("", .exited(0))
            }
            let connection = Self.connection(session)
            var runner = fixture.runner(connection)
            runner.keepFailedScripts = keep
            let step = Customizer.shell(ShellCustomizer(name: "breaks", script: .inline(["echo before", "exit 3"])))
            await #expect(throws: StepFailure.self) { try await runner.run(step, index: 0, path: "properties.customize[0]") }
            let remote = try #require(session.uploads.first?.remote)
            let removed = session.calls.contains { $0.command == "rm -f '\(remote)'" }
            #expect(removed == !keep)
            #expect(connection.placedFiles == (keep ? [remote] : []), "the final cleanup still removes what a kept VM kept")
        }
    }

    @Test("a reboot step: a login that reaches the old boot's sshd is retried until the new boot answers")
    func rebootRetriesTheBootIDRead() async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        let before = StandInSession(bootID: "boot-1") { command in
            command.hasPrefix("chmod +x ") ? ("", .disconnected("connection reset")) : ("", .exited(0))
        }
        let dying = StandInSession(bootID: "boot-1", dropsEverything: true)
        let after = StandInSession(bootID: "boot-2")
        let connection = Self.connection(before, then: [dying, after])
        let step = Customizer.shell(ShellCustomizer(name: "reboot", script: .inline(["sudo reboot"])))
        try await fixture.runner(connection).run(step, index: 0, path: "properties.customize[0]")

        let log = fixture.logText
        #expect(log.contains("the session ended before the guest answered"), "\(log)")
        #expect(log.contains("the guest restarted (boot ID boot-1 → boot-2)"))
        #expect(log.contains("Communicator ended with: 2300218"))
        let remote = try #require(before.uploads.first?.remote)
        #expect(after.calls.contains { $0.command == "rm -f '\(remote)'" }, "removed on the new boot")
    }

    @Test func deprovisioningAndFinalCleanup() {
        let command = LinuxDeprovisioner.command(username: "packer", placedFiles: [])
        #expect(command.hasPrefix("cat /tmp/DeprovisioningScript.sh; PACKER_BUILDER_TYPE='azure-arm' PACKER_BUILD_NAME='azure-arm' sudo -E sh -c 'sh /tmp/DeprovisioningScript.sh && setsid -f /bin/sh -c "),
                "the script as root, then the cleanup from the same root shell (waagent may have deleted the build user): \(command)")
        #expect(LinuxDeprovisioner.defaultScript.hasSuffix("$WAAGENT -force -deprovision+user && export HISTSIZE=0 && sync\n"))
        let cleanup = LinuxDeprovisioner.cleanupScript(username: "packer", placedFiles: ["/tmp/script_12.sh", "/tmp/it's.sh"])
        let files = ["/tmp/DeprovisioningScript.sh", "/tmp/script_12.sh", "/tmp/it's.sh"].map(ShellQuote.quote).joined(separator: " ")
        #expect(cleanup.contains("\nrm -f \(files)\n"), "\(cleanup)")

    }

    @Test func everyCustomizerNamesItsPackerProvisioner() {
        let names = [
            Customizer.shell(ShellCustomizer(name: nil, script: .inline(["true"]))).packerProvisioner,
            Customizer.file(FileCustomizer(name: nil, sourceUri: "file:///x", destination: "/tmp/x")).packerProvisioner,
        ]
        #expect(names == ["shell", "file"])
    }
}
