import ArgumentParser
import Foundation
import KilnGuest
import KilnSupport
import KilnWinRM

struct WinRMExecCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "exec",
        abstract: "Run one cmd.exe command line over WinRM, stream its output, exit with its exit code (as winrs does).",
        discussion: """
        The password comes from an environment variable (--password-env, default KILN_WINRM_PASSWORD), never from \
        the command line. NTLM over http:// encrypts every message; Basic needs https:// or AllowUnencrypted on the \
        service. Exit codes above 255 reach the shell modulo 256; the full code is printed to standard error.
        """
    )

    @Option(help: "The WS-Management endpoint, e.g. https://HOST:5986/wsman or http://HOST:5985/wsman.")
    var url: String

    @Option(help: "User name: user, DOMAIN\\user or user@domain.")
    var username: String

    @Option(help: "The environment variable holding the password.")
    var passwordEnv = "KILN_WINRM_PASSWORD"

    @Option(help: "basic or ntlm.")
    var auth: WinRMAuth = .ntlm

    @Flag(help: "Accept any HTTPS certificate (a self-signed one, as a fresh build VM has).")
    var insecure = false

    @Option(name: .customLong("pin-sha256"), help: "Accept only the HTTPS certificate with this SHA-256 (64 hex digits; a kept build VM's command line names it).")
    var pinSHA256: String?

    @Option(help: "Keep trying to reach the endpoint for this long before giving up, e.g. 5m (default: one attempt).")
    var wait: String?

    @Argument(parsing: .postTerminator, help: "The command line to run (after --).")
    var command: [String] = []

    func validate() throws {
        guard !command.isEmpty else { throw ValidationError("give the command line after --, e.g. kiln winrm exec --url … --username … -- ipconfig /all") }
        if let wait, DurationText.parse(wait) == nil { throw ValidationError("--wait expects a duration such as 5m or 90s, found \"\(wait)\"") }
        if let pinSHA256, Self.digest(pinSHA256) == nil {
            throw ValidationError("--pin-sha256 expects 64 hex digits (colons allowed), found \"\(pinSHA256)\"")
        }
    }

    static func digest(_ text: String) -> [UInt8]? {
        let hex = Array(text.replacingOccurrences(of: ":", with: "").lowercased())
        guard hex.count == 64 else { return nil }
        var bytes: [UInt8] = []
        for index in stride(from: 0, to: 64, by: 2) {
            guard let byte = UInt8(String(hex[index...index + 1]), radix: 16) else { return nil }
            bytes.append(byte)
        }
        return bytes
    }

    func run() async throws {
        guard let password = ProcessInfo.processInfo.environment[passwordEnv] else {
            throw fail(KilnError(.invalidArgument, "expected the password in the environment variable \(passwordEnv), found it unset"))
        }
        let endpoint: WinRMEndpoint
        do {
            endpoint = try WinRMEndpoint(url: url)
        } catch {
            throw ValidationError(error.message)
        }
        var pinned = WinRMOptions(endpoint: endpoint, username: username, password: password, auth: auth, insecure: insecure || pinSHA256 != nil)
        // A pinned certificate replaces the CA check: a build VM's certificate is self-signed.
        pinned.pinnedCertificateSHA256 = pinSHA256.flatMap(Self.digest)
        let options = pinned
        let commandLine = command.count == 1 ? command[0] : command.map(WindowsQuote.argument).joined(separator: " ")
        let waitFor = wait.flatMap(DurationText.parse)
        let status: Int32
        do {
            status = try await Interruptible.run { () async throws(KilnError) -> Int32 in
                let client: WinRMClient
                if let waitFor {
                    client = try await WinRMSession.waitUntilReady(options, timeout: waitFor) { printError("kiln: \($0)") }.client
                } else {
                    client = WinRMClient(options)
                }
                defer { client.close() }
                let result = try await client.run(commandLine) { chunk in
                    let handle = chunk.stream == .stdout ? FileHandle.standardOutput : FileHandle.standardError
                    handle.write(Data(chunk.bytes))
                }
                switch result.outcome {
                case .exited(let code):
                    if code < 0 || code > 255 { printError("kiln: exit code \(UInt32(bitPattern: code)) (0x\(String(UInt32(bitPattern: code), radix: 16, uppercase: true)))") }
                    return code
                case .signaled(let name):
                    printError("kiln: the command was stopped (\(name))")
                    return 255
                case .disconnected(let reason):
                    printError("kiln: the connection to \(endpoint) was lost before the command finished: \(reason)")
                    return 255
                }
            }
        } catch let error as KilnError {
            if error.code == .cancelled || Task.isCancelled {
                printError("kiln: cancelled; the command was signalled and its shell deleted")
                throw ExitCode(130)
            }
            throw fail(error)
        }
        throw ExitCode(status)
    }
}
