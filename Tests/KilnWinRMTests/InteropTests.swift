import Foundation
import KilnGuest
import KilnTestSupport
import Testing
@testable import KilnWinRM

enum InteropEnvironment {
    static var python: String? {
        let cache = ProcessInfo.processInfo.environment["XDG_CACHE_HOME"] ?? (NSHomeDirectory() + "/.cache")
        let path = cache + "/kiln/interop-venv/bin/python"
        return FileManager.default.isExecutableFile(atPath: path) ? path : nil
    }
}

/// Kiln's WinRM pieces against implementations it shares no code with: its NTLM client and session security
/// against pyspnego's NTLM acceptor (what pywinrm uses to talk to real Windows), and its WS-Management test server
/// against pywinrm as the client, so that the server the client tests run against speaks what Windows speaks.
/// scripts/install-deps puts both in a virtual environment; scripts/test sets KILN_INTEROP_TESTS=1, which makes a
/// missing environment a failure instead of a skip.
@Suite(.serialized, .enabled(if: InteropEnvironment.python != nil || ProcessInfo.processInfo.environment["KILN_INTEROP_TESTS"] == "1"))
struct InteropTests {
    static func requirePython() throws -> String {
        try #require(InteropEnvironment.python, "the interop virtual environment is missing: run scripts/install-deps")
    }

    static func write(_ script: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-interop-\(UUID().uuidString).py").path
        try script.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Line-oriented conversation with a Python process: hex in, hex out.
    final class Conversation {
        let process = Process()
        let input = Pipe()
        let output = Pipe()
        let errors = Pipe()
        var buffer = Data()

        init(python: String, script: String, environment: [String: String]) throws {
            process.executableURL = URL(fileURLWithPath: python)
            process.arguments = [script]
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
            process.standardInput = input
            process.standardOutput = output
            process.standardError = errors
            try process.run()
        }

        func send(_ bytes: [UInt8]) {
            input.fileHandleForWriting.write(Data((bytes.map { String(format: "%02x", $0) }.joined() + "\n").utf8))
        }

        func receive() throws -> [UInt8] {
            while !buffer.contains(0x0A) {
                let data = output.fileHandleForReading.availableData
                if data.isEmpty {
                    let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                    throw InteropFailure(description: "the Python side ended: \(stderr)")
                }
                buffer += data
            }
            let index = buffer.firstIndex(of: 0x0A)!
            let line = String(decoding: buffer[buffer.startIndex..<index], as: UTF8.self)
            buffer = Data(buffer[(index + 1)...])
            return stride(from: 0, to: line.count, by: 2).map {
                let start = line.index(line.startIndex, offsetBy: $0)
                return UInt8(line[start..<line.index(start, offsetBy: 2)], radix: 16)!
            }
        }

        func finish() -> Int32 {
            try? input.fileHandleForWriting.close()
            process.waitUntilExit()
            return process.terminationStatus
        }
    }

    struct InteropFailure: Error, CustomStringConvertible { let description: String }

    @Test func kilnsNTLMAgainstPyspnegosAcceptor() async throws {
        try await OwnThread.run { try Self.kilnsNTLMAgainstPyspnegosAcceptor() }
    }

    /// The tests talk to Python through blocking pipes: on a thread of their own (`OwnThread`).
    static func kilnsNTLMAgainstPyspnegosAcceptor() throws {
        let python = try Self.requirePython()
        let users = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-ntlm-users-\(UUID().uuidString)").path
        let password = "S3cret$'\"ü-✓"
        try "KILN:Administrator:\(password)\n".write(toFile: users, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: users) }
        let script = try Self.write("""
        import sys, spnego
        def read(): return bytes.fromhex(sys.stdin.readline().strip())
        def write(b): sys.stdout.write(b.hex() + "\\n"); sys.stdout.flush()
        ctx = spnego.server(protocol="ntlm")
        write(ctx.step(read()))
        ctx.step(read())
        assert ctx.complete, "the NTLM exchange did not complete"
        write(ctx.unwrap(read()).data)
        write(ctx.unwrap(read()).data)
        write(ctx.wrap("reply from pyspnego ✓".encode(), encrypt=True).data)
        """)
        defer { try? FileManager.default.removeItem(atPath: script) }
        let conversation = try Conversation(python: python, script: script, environment: ["NTLM_USER_FILE": users])
        var client = NTLMClient(username: "KILN\\Administrator", password: password)
        conversation.send(client.negotiateMessage())
        let challenge = try conversation.receive()
        let (authenticate, session) = try client.authenticate(challengeBytes: challenge)
        conversation.send(authenticate)
        // Two messages: the second checks that both sides advance their sequence numbers and RC4 streams alike.
        for text in ["first message from Kiln ✓", String(repeating: "second, longer ", count: 200)] {
            let (sealed, signature) = session.seal(Array(text.utf8))
            conversation.send(signature + sealed)
            #expect(try conversation.receive() == Array(text.utf8))
        }
        let reply = try conversation.receive()
        #expect(try session.unseal(Array(reply.dropFirst(16)), signature: Array(reply.prefix(16))) == Array("reply from pyspnego ✓".utf8))
        #expect(conversation.finish() == 0)
    }

    @Test func wrongPasswordIsRefusedByPyspnego() async throws {
        try await OwnThread.run { try Self.wrongPasswordIsRefusedByPyspnego() }
    }

    static func wrongPasswordIsRefusedByPyspnego() throws {
        let python = try Self.requirePython()
        let users = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-ntlm-users-\(UUID().uuidString)").path
        try "KILN:Administrator:right\n".write(toFile: users, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: users) }
        let script = try Self.write("""
        import sys, spnego
        def read(): return bytes.fromhex(sys.stdin.readline().strip())
        ctx = spnego.server(protocol="ntlm")
        sys.stdout.write(ctx.step(read()).hex() + "\\n"); sys.stdout.flush()
        try:
            ctx.step(read())
        except Exception as error:
            sys.stdout.write("00\\n"); sys.stdout.flush(); sys.exit(0)
        sys.stdout.write("01\\n"); sys.stdout.flush()
        """)
        defer { try? FileManager.default.removeItem(atPath: script) }
        let conversation = try Conversation(python: python, script: script, environment: ["NTLM_USER_FILE": users])
        var client = NTLMClient(username: "KILN\\Administrator", password: "wrong")
        conversation.send(client.negotiateMessage())
        let challenge = try conversation.receive()
        conversation.send(try client.authenticate(challengeBytes: challenge).message)
        #expect(try conversation.receive() == [0])
        _ = conversation.finish()
    }

    @Test(arguments: ["ntlm", "basic"])
    func pywinrmAgainstTheTestServer(transport: String) async throws {
        try await OwnThread.run { try Self.pywinrmAgainstTheTestServer(transport: transport) }
    }

    static func pywinrmAgainstTheTestServer(transport: String) throws {
        let python = try Self.requirePython()
        // requests encodes a Basic password as Latin-1, Kiln as UTF-8: an ASCII password for Basic, a non-ASCII one
        // for NTLM (UTF-16 on both sides).
        let server = try WinRMTestServer(auth: transport == "ntlm" ? .ntlm : .basic, password: transport == "ntlm" ? "Pa$$w0rd'\"é✓" : "Pa$$w0rd'\"")
        defer { server.stop() }
        let script = try Self.write("""
        import sys, winrm
        url, user, password, transport = sys.argv[1:5]
        session = winrm.Session(url, auth=(user, password), transport=transport)
        result = session.run_cmd("printf 'hello from pywinrm\\\\n'; printf 'to stderr\\\\n' >&2; exit 7")
        print(result.status_code)
        print(result.std_out.decode(), end="")
        print(result.std_err.decode(), end="")
        """)
        defer { try? FileManager.default.removeItem(atPath: script) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [script, server.url, server.username, server.password, transport]
        let output = Pipe(), errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        let stdout = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "\(stderr)")
        #expect(stdout == "7\nhello from pywinrm\nto stderr\n", "\(stderr)")
        #expect(server.actions.contains("Create") && server.actions.contains("Command") && server.actions.contains("Delete"))
    }
}
