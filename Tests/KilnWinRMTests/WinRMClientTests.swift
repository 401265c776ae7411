import Foundation
import KilnDigest
import KilnGuest
import KilnMachine
import KilnSupport
import KilnTestSupport
import Testing
@testable import KilnWinRM

/// The WinRM client against the protocol test server, over real HTTP (and HTTPS through a TLS terminator).
@Suite(.serialized) struct WinRMClientTests {
    static func client(_ server: WinRMTestServer, auth: WinRMAuth, password: String? = nil, operationTimeout: Duration = .seconds(5),
                       url: String? = nil, insecure: Bool = false) throws -> WinRMClient {
        WinRMClient(WinRMOptions(endpoint: try WinRMEndpoint(url: url ?? server.url), username: server.username,
                                 password: password ?? server.password, auth: auth, insecure: insecure, operationTimeout: operationTimeout))
    }

    static func run(_ client: WinRMClient, _ command: String, stdin: [UInt8]? = nil) async throws -> (ExecResult, String, String) {
        let collector = OutputCollector()
        let result = try await client.run(command, stdin: stdin) { collector.append($0) }
        return (result, collector.stdoutText, collector.stderrText)
    }

    @Test(arguments: [WinRMAuth.basic, .ntlm])
    func streamsExitCodesAndStdin(auth: WinRMAuth) async throws {
        let server = try WinRMTestServer(auth: auth == .basic ? .basic : .ntlm)
        defer { server.stop() }
        let client = try Self.client(server, auth: auth)
        defer { client.close() }

        let (result, stdout, stderr) = try await Self.run(client, "printf 'hello\\n'; printf 'oops \\342\\234\\223\\n' >&2; exit 3")
        #expect(result.outcome == .exited(3))
        #expect(stdout == "hello\n")
        #expect(stderr == "oops ✓\n")

        // stdin, sent in pieces larger than one envelope holds.
        let input = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let collector = OutputCollector()
        let echoed = try await client.run("od -An -tx1 -v | tr -d ' \\n' | sha256sum | cut -c1-64", stdin: input) { collector.append($0) }
        #expect(echoed.succeeded)
        let expected = input.map { String(format: "%02x", $0) }.joined()
        let expectedSum = try SHA256Digest.hex(of: expected)
        #expect(collector.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == expectedSum)
        #expect(server.actions.filter { $0 == "Send" }.count >= 2)

        // Long output arrives whole over many Receives.
        let (long, text, _) = try await Self.run(client, "seq 1 150000")
        #expect(long.succeeded)
        let lines = text.split(separator: "\n")
        #expect(lines.count == 150_000)
        #expect(lines.last == "150000")
        #expect(server.actions.filter { $0 == "Receive" }.count > 5)
        // One connection for everything: NTLM authenticates it once.
        #expect(server.connections == 1)
        #expect(server.openShells == 0)
    }

    @Test func operationTimeoutMeansPollAgain() async throws {
        let server = try WinRMTestServer(auth: .ntlm)
        defer { server.stop() }
        let client = try Self.client(server, auth: .ntlm, operationTimeout: .seconds(1))
        defer { client.close() }
        let (result, stdout, _) = try await Self.run(client, "sleep 3.5; echo done")
        #expect(result.outcome == .exited(0))
        #expect(stdout == "done\n")
        #expect(server.actions.filter { $0 == "TimedOut" }.count >= 2)
    }

    @Test func reconnectsAfterALostConnection() async throws {
        let server = try WinRMTestServer(auth: .ntlm)
        defer { server.stop() }
        // The second Receive's connection is dropped without an answer: the client reconnects, authenticates again
        // and repeats the Receive.
        let receives = Locked(0)
        server.dropRequest = { _, action in
            guard action == "Receive" else { return false }
            return receives.withLock { $0 += 1; return $0 == 2 }
        }
        let client = try Self.client(server, auth: .ntlm, operationTimeout: .seconds(1))
        defer { client.close() }
        let (result, stdout, _) = try await Self.run(client, "echo one; sleep 2; echo two")
        #expect(result.outcome == .exited(0))
        #expect(stdout == "one\ntwo\n")
        #expect(server.connections == 2)
    }

    @Test func aCommandWhoseConnectionNeverReturnsIsDisconnected() async throws {
        let server = try WinRMTestServer(auth: .basic)
        defer { server.stop() }
        let client = try Self.client(server, auth: .basic, operationTimeout: .seconds(1))
        defer { client.close() }
        // Every Receive from the third on is dropped, as when the guest restarts and does not come back.
        server.dropRequest = { number, action in action == "Receive" && number > 3 }
        let (result, stdout, _) = try await Self.run(client, "echo before; sleep 30")
        guard case .disconnected = result.outcome else {
            Issue.record("expected a disconnected outcome, found \(result)")
            return
        }
        #expect(stdout == "before\n")
    }

    @Test(arguments: [WinRMAuth.basic, .ntlm])
    func wrongCredentialsAreRefusedClearly(auth: WinRMAuth) async throws {
        let server = try WinRMTestServer(auth: auth == .basic ? .basic : .ntlm)
        defer { server.stop() }
        let client = try Self.client(server, auth: auth, password: "wrong")
        defer { client.close() }
        do {
            _ = try await Self.run(client, "echo never")
            Issue.record("expected a refusal")
        } catch let error as KilnError {
            #expect(error.message.contains("refused the credentials of kiln"), "\(error)")
            #expect(error.message.contains("HTTP 401"), "\(error)")
        }
        #expect(!server.actions.contains("Command"))
    }

    @Test func cancellingStopsTheCommandAndFreesTheShell() async throws {
        let server = try WinRMTestServer(auth: .ntlm)
        defer { server.stop() }
        let client = try Self.client(server, auth: .ntlm, operationTimeout: .seconds(20))
        defer { client.close() }
        let clock = ContinuousClock()
        let start = clock.now
        let task = Task { try await client.run("sleep 60", output: { _ in }) }
        try await Task.sleep(for: .seconds(1.5))
        task.cancel()
        let outcome = await task.result
        #expect(clock.now - start < .seconds(15))
        guard case .failure(let error) = outcome, (error as? KilnError)?.code == .cancelled else {
            Issue.record("expected cancellation, found \(outcome)")
            return
        }
        #expect(server.actions.contains("Signal:terminate"))
        #expect(server.openShells == 0)
    }

    /// Uploads: streamed over WinRM (stdin), and served from the host for the guest to fetch. The test server has
    /// no PowerShell, so it runs a shell equivalent of the generated script: what is checked here is the transport,
    /// the guest-side destination and the sha256 report. The scripts themselves are checked in WindowsScriptTests.
    @Test(arguments: [false, true])
    func uploadsVerifyTheirChecksum(overHTTP: Bool) async throws {
        let server = try WinRMTestServer(auth: .ntlm)
        defer { server.stop() }
        server.translate = { line in
            guard let script = PowerShell.decode(commandLine: line),
                  let dest = script.firstMatch(of: /\$dest = '([^']*)'/)?.1 else { return line }
            let hash = "printf 'sha256:%s\\n' \"$(sha256sum '\(dest)' | cut -c1-64 | tr a-f A-F)\""
            if let url = script.firstMatch(of: /DownloadFile\('([^']*)'/)?.1 {
                return "curl -sf '\(url)' -o '\(dest)' && \(hash)"
            }
            return "base64 -d > '\(dest)' && \(hash)"
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-winrm-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let source = directory + "/source.bin"
        let bytes = (0..<(3 * 1024 * 1024 + 17)).map { _ in UInt8.random(in: 0...255) }
        try Data(bytes).write(to: URL(fileURLWithPath: source))
        let session = WinRMSession(client: try Self.client(server, auth: .ntlm), hostAddressForGuest: overHTTP ? "127.0.0.1" : nil)
        defer { Task { await session.close() } }
        let clock = ContinuousClock()
        let start = clock.now
        try await session.upload(localPath: source, remotePath: directory + "/copy.bin")
        let elapsed = clock.now - start
        #expect(try Data(contentsOf: URL(fileURLWithPath: directory + "/copy.bin")) == Data(bytes))
        print("upload of 3 MiB \(overHTTP ? "over HTTP from the host" : "streamed over WinRM"): \(DurationText.format(elapsed))")
        if !overHTTP {
            #expect(server.actions.filter { $0 == "Send" }.count >= 30)
        }

        // The guest's copy differing from the source is an error naming both sums.
        server.translate = { line in
            guard let script = PowerShell.decode(commandLine: line), let dest = script.firstMatch(of: /\$dest = '([^']*)'/)?.1 else { return line }
            return (script.contains("DownloadFile") ? "" : "cat > /dev/null; ") + "printf 'x' > '\(dest)'; printf 'sha256:2D711642B726B04401627CA9FBAC32F5C8530FB1903CC4DB02258717921A4881\\n'"
        }
        do {
            try await session.upload(localPath: source, remotePath: directory + "/bad.bin")
            Issue.record("expected a checksum mismatch")
        } catch {
            #expect(error.code == .checksumMismatch)
            #expect(error.message.contains("2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"))
        }
    }

    @Test func httpsThroughATLSTerminator() async throws {
        let server = try WinRMTestServer(auth: .ntlm)
        server.behindTLS = true
        defer { server.stop() }
        let tls = try await LoopbackTLS.start(forwardingTo: server.port)
        defer { tls.stop() }
        let url = "https://127.0.0.1:\(tls.port)/wsman"
        let client = WinRMClient(WinRMOptions(endpoint: try WinRMEndpoint(url: url), username: server.username, password: server.password,
                                              auth: .ntlm, insecure: true, operationTimeout: .seconds(5)))
        defer { client.close() }
        let (result, stdout, _) = try await Self.run(client, "echo over tls")
        #expect(result.succeeded)
        #expect(stdout == "over tls\n")
        #expect(client.peerCertificateSHA256?.count == 32)

        // waitUntilReady pins the certificate it saw first; a connection presenting another is refused at once.
        let ready = try await WinRMSession.waitUntilReady(WinRMOptions(endpoint: try WinRMEndpoint(url: url), username: server.username,
                                                                       password: server.password, auth: .ntlm, insecure: true), timeout: .seconds(30))
        #expect(ready.client.options.pinnedCertificateSHA256 == client.peerCertificateSHA256)
        #expect(try await ready.exec("echo pinned", output: { _ in }).succeeded)
        await ready.close()
        var wrongPin = WinRMOptions(endpoint: try WinRMEndpoint(url: url), username: server.username, password: server.password,
                                    auth: .ntlm, insecure: true, operationTimeout: .seconds(5))
        wrongPin.pinnedCertificateSHA256 = [UInt8](repeating: 7, count: 32)
        let pinnedClient = WinRMClient(wrongPin)
        defer { pinnedClient.close() }
        do {
            _ = try await Self.run(pinnedClient, "echo never")
            Issue.record("expected the certificate to be refused")
        } catch let error as KilnError {
            #expect(error.message.contains("other than the one pinned"), "\(error)")
        }

        // Without --insecure a self-signed certificate is refused, with the way out named.
        let strict = WinRMClient(WinRMOptions(endpoint: try WinRMEndpoint(url: url), username: server.username, password: server.password,
                                              auth: .ntlm, insecure: false, operationTimeout: .seconds(5), retries: 0))
        defer { strict.close() }
        do {
            _ = try await Self.run(strict, "echo never")
            Issue.record("expected the certificate to be refused")
        } catch let error as KilnError {
            #expect(error.message.contains("certificate"), "\(error)")
            #expect(error.message.contains("--insecure"), "\(error)")
        }

        // kiln winrm exec --pin-sha256 (what a kept Windows VM's command line prints): the pinned certificate is
        // accepted, any other refused.
        let seen = try #require(client.peerCertificateSHA256).map { String(format: "%02x", $0) }.joined()
        let base = ["winrm", "exec", "--url", url, "--username", server.username]
        let environment = ["KILN_WINRM_PASSWORD": server.password]
        let pinned = try await KilnExecutable.run(base + ["--pin-sha256", seen, "--", "echo pinned by the CLI"], environment: environment)
        #expect(pinned.status == 0 && pinned.stdout == "pinned by the CLI\n", "\(pinned.stderr)")
        let other = try await KilnExecutable.run(base + ["--pin-sha256", String(repeating: "ab", count: 32), "--", "echo never"], environment: environment)
        #expect(other.status == 1 && other.stderr.contains("other than the one pinned"), "\(other.stderr)")
        let malformed = try await KilnExecutable.run(base + ["--pin-sha256", "xyz", "--", "echo never"], environment: environment)
        #expect(malformed.status == 64 && malformed.stderr.contains("--pin-sha256 expects 64 hex digits"), "\(malformed.stderr)")
    }

    @Test func endpointParsing() throws {
        #expect(try WinRMEndpoint(url: "http://10.0.0.5").description == "http://10.0.0.5:5985/wsman")
        #expect(try WinRMEndpoint(url: "https://win.example:9999/custom").description == "https://win.example:9999/custom")
        #expect(try WinRMEndpoint(url: "HTTPS://host/").port == 5986)
        #expect(throws: KilnError.self) { try WinRMEndpoint(url: "ftp://host") }
        #expect(throws: KilnError.self) { try WinRMEndpoint(url: "host:5985") }
    }

    @Test func envelopesEscapeAndFaultsParse() throws {
        let body = WSMan.commandBody("echo <a & 'b'> \"c\" ✓")
        #expect(body.contains("echo &lt;a &amp; &apos;b&apos;&gt; &quot;c&quot; ✓"))
        let envelope = WSMan.envelope(to: "http://h:5985/wsman", action: .command, operationTimeout: .seconds(20), shellID: "S-1",
                                      options: [("WINRS_CONSOLEMODE_STDIN", "TRUE")], body: body)
        let root = try XMLElementNode.parse(Array(envelope.utf8))
        #expect(root.first("Command")?.text == "echo <a & 'b'> \"c\" ✓")
        #expect(root.first("OperationTimeout")?.trimmedText == "PT20.000S")
        #expect(root.all("Selector").first?.attributes["Name"] == "ShellId")

        let faultXML = """
        <s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><s:Fault><s:Code><s:Value>s:Receiver</s:Value>\
        <s:Subcode><s:Value>w:TimedOut</s:Value></s:Subcode></s:Code><s:Reason><s:Text xml:lang="">late</s:Text></s:Reason>\
        <s:Detail><f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" Code="2150858793" Machine="m">\
        <f:Message>The operation timed out.</f:Message></f:WSManFault></s:Detail></s:Fault></s:Body></s:Envelope>
        """
        let fault = try #require(WSManFault(try XMLElementNode.parse(Array(faultXML.utf8)), httpStatus: 500))
        #expect(fault.isTimedOut)
        #expect(fault.reason == "The operation timed out.")
        // An exit code above Int32.max (an NTSTATUS) keeps its bits.
        let receive = try XMLElementNode.parse(Array("""
        <r xmlns:rsp="x"><rsp:CommandState State="\(WSMan.commandDone)"><rsp:ExitCode>3221225786</rsp:ExitCode></rsp:CommandState></r>
        """.utf8))
        #expect(ReceiveResult(receive).exitCode == Int32(bitPattern: 3_221_225_786))
    }
}
