import Foundation
import KilnGuest
import KilnSupport
import Testing
@testable import KilnBuild
@testable import KilnCustomizers
@testable import KilnTemplate

/// A communicator that is neither SSH nor WinRM, defined only here, as a new communicator module would be: its
/// "guest" is this host, reached by running `/bin/sh -c` (the way Packer's `none`/local communicators work). It
/// implements KilnGuest's `Communicator` and `GuestSession` and nothing else; the customizers run through it
/// unchanged.
struct LocalShellCommunicator: Communicator {
    /// Attempts that fail before the "guest" answers, as a booting guest's would.
    let failingAttempts: Int

    func waitForSession(_ endpoint: GuestEndpoint, timeout: Duration, progress: @escaping @Sendable (KilnError) -> Void,
                        abort: @escaping @Sendable () async -> KilnError?) async throws(KilnError) -> any GuestSession {
        for attempt in 0..<failingAttempts {
            if let reason = await abort() { throw reason }
            progress(KilnError(.io, "attempt \(attempt + 1): connection refused"))
        }
        return LocalShellSession()
    }
}

final class LocalShellSession: GuestSession, @unchecked Sendable {
    func exec(_ command: String, stdin: [UInt8]?, output: @escaping @Sendable (OutputChunk) -> Void) async throws(KilnError) -> ExecResult {
        let result = try await Subprocess.run("/bin/sh", ["-c", command], timeout: .seconds(60),
                                              stdinText: stdin.map { String(decoding: $0, as: UTF8.self) } ?? "")
        if !result.stdout.isEmpty { output(OutputChunk(stream: .stdout, bytes: Array(result.stdout))) }
        if !result.stderr.isEmpty { output(OutputChunk(stream: .stderr, bytes: Array(result.stderr))) }
        return ExecResult(.exited(result.status))
    }

    func upload(localPath: String, remotePath: String) async throws(KilnError) {
        _ = try await Subprocess.check("cp", [localPath, remotePath])
    }

    func close() async {}
}

@Suite("The communicator seam (no VM)")
struct CommunicatorSeamTests {
    @Test("a communicator outside Kiln's modules yields a session the Linux customizers run a Shell and a File step through")
    func aNewCommunicatorRunsTheCustomizers() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-seam-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder + "/downloads", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let endpoint = GuestEndpoint(port: 22, username: "packer", access: .ssh(key: SSHKeyPair(), hostKey: HostKeyPin()))
        let attempts = Locked<[String]>([])
        let session = try await LocalShellCommunicator(failingAttempts: 2).waitForSession(endpoint, timeout: .seconds(10),
                                                                                          progress: { error in attempts.withLock { $0.append(error.message) } },
                                                                                          abort: { nil })
        #expect(attempts.withLock { $0 }.count == 2)

        let log = CustomizationLog(path: folder + "/customization.log")
        let connection = GuestConnection(session: session, reconnectTimeout: .seconds(10)) { () async throws(KilnError) -> any GuestSession in
            LocalShellSession()
        }
        let runner = StepRunner(connection: connection, log: log, events: { _ in }, downloads: folder + "/downloads", guestOS: .linux)
        let source = folder + "/payload.txt"
        try "payload\n".write(toFile: source, atomically: true, encoding: .utf8)
        try await runner.run(.shell(ShellCustomizer(name: "write", script: .inline(["echo \"from $PACKER_BUILDER_TYPE\" > \(folder)/shell.out"]))),
                             index: 0, path: "properties.customize[0]")
        try await runner.run(.file(FileCustomizer(name: "copy", sourceUri: "file://" + source, destination: folder + "/copied.txt")),
                             index: 1, path: "properties.customize[1]")
        #expect(try String(contentsOfFile: folder + "/shell.out", encoding: .utf8) == "from azure-arm\n")
        #expect(try String(contentsOfFile: folder + "/copied.txt", encoding: .utf8) == "payload\n")
        #expect(connection.placedFiles.isEmpty, "the runner removed what it placed")
    }

    @Test("the build picks the communicator by the endpoint the builder hands out")
    func theEndpointPicksTheCommunicator() {
        let ssh = GuestEndpoint(port: 2222, username: "packer", access: .ssh(key: SSHKeyPair(), hostKey: HostKeyPin()))
        let winRM = GuestEndpoint(port: 5986, username: "Administrator",
                                  access: .winRM(password: "p", certificate: CertificatePin(), hostAddressForGuest: "10.0.2.2"))
        #expect(String(describing: type(of: Communicators.communicator(for: ssh))) == "SSHCommunicator")
        #expect(String(describing: type(of: Communicators.communicator(for: winRM))) == "WinRMCommunicator")
        #expect(ssh.url == "ssh://packer@127.0.0.1:2222")
        #expect(winRM.url == "https://127.0.0.1:5986/wsman")
    }
}
