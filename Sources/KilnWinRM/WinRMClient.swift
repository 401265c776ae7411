import Foundation
import KilnGuest
import KilnSupport

public enum WinRMAuth: String, Sendable, CaseIterable {
    case basic
    case ntlm
}

public struct WinRMOptions: Sendable {
    public var endpoint: WinRMEndpoint
    public var username: String
    public var password: String
    public var auth: WinRMAuth
    /// Accept any server certificate (a self-signed one, as a fresh build VM has).
    public var insecure: Bool
    /// How long the service holds a Receive open when there is no output (w:OperationTimeout).
    public var operationTimeout: Duration
    public var maxEnvelopeSize: Int
    /// Reconnects after a lost connection, for requests that are safe to repeat.
    public var retries: Int
    /// HTTPS: the SHA-256 of the only certificate accepted (trust on first use, as SSH pins a host key): a build
    /// pins the certificate its guest presented first, so a later connection cannot be answered by another.
    public var pinnedCertificateSHA256: [UInt8]?

    public init(endpoint: WinRMEndpoint, username: String, password: String, auth: WinRMAuth = .ntlm, insecure: Bool = false,
                operationTimeout: Duration = .seconds(20), maxEnvelopeSize: Int = 153_600, retries: Int = 3) {
        self.endpoint = endpoint
        self.username = username
        self.password = password
        self.auth = auth
        self.insecure = insecure
        self.operationTimeout = operationTimeout
        self.maxEnvelopeSize = maxEnvelopeSize
        self.retries = retries
    }

    /// NTLM over plain HTTP encrypts every message with the session's keys (MS-WSMV 2.2.9.1), as Windows requires
    /// unless AllowUnencrypted is set.
    var encrypts: Bool { auth == .ntlm && !endpoint.secure }
}

/// A WS-Management client for the Windows Remote Shell: one persistent connection, Basic or NTLMv2 authentication
/// (with message encryption on HTTP), shells and commands with streamed output.
public final class WinRMClient: @unchecked Sendable {
    public let options: WinRMOptions
    private let connection: HTTPConnection
    private var session: NTLMSessionSecurity?
    /// Requests run one at a time, off the cooperative pool (they block on the socket).
    private let queue = DispatchQueue(label: "kiln.winrm")
    /// Set when a waiting task is cancelled: the blocked request fails and is not retried.
    private let abortRequested = Locked(false)

    public init(_ options: WinRMOptions) {
        self.options = options
        connection = HTTPConnection(endpoint: options.endpoint, verifyCertificate: !options.insecure, pinnedCertificateSHA256: options.pinnedCertificateSHA256)
    }

    /// SHA-256 of the certificate the HTTPS service presented, once connected.
    public var peerCertificateSHA256: [UInt8]? { connection.peerCertificateSHA256 }

    public func close() {
        queue.sync {
            connection.close()
            session = nil
        }
    }

    enum Reply {
        case ok(XMLElementNode)
        case fault(WSManFault)
    }

    // MARK: Transport

    private static let encryptedType = "application/HTTP-SPNEGO-session-encrypted"
    private static let boundary = "Encrypted Boundary"

    private var commonHeaders: [(String, String)] {
        [("User-Agent", "Kiln WinRM client"), ("Content-Type", "application/soap+xml;charset=UTF-8")]
    }

    private func connect() throws(KilnError) {
        session = nil
        try connection.open()
        guard options.auth == .ntlm else { return }
        var client = NTLMClient(username: options.username, password: options.password)
        let negotiate = client.negotiateMessage()
        let first = try connection.roundTrip(headers: commonHeaders + [("Authorization", "Negotiate " + Data(negotiate).base64EncodedString())],
                                             body: [], readTimeout: .seconds(30))
        guard first.status == 401,
              let header = first.headers("WWW-Authenticate").first(where: { $0.lowercased().hasPrefix("negotiate ") }),
              let challenge = Data(base64Encoded: String(header.dropFirst("negotiate ".count)).trimmingCharacters(in: .whitespaces)) else {
            let offered = first.headers("WWW-Authenticate").map { $0.split(separator: " ").first.map(String.init) ?? $0 }
            connection.close()
            throw KilnError(.external, "\(options.endpoint): expected an NTLM challenge (HTTP 401 with WWW-Authenticate: Negotiate …), found HTTP \(first.status)"
                            + (offered.isEmpty ? "" : " offering \(offered.joined(separator: ", "))")
                            + (offered.contains { $0.lowercased() == "basic" } && !offered.contains { $0.lowercased() == "negotiate" } ? "; try --auth basic" : ""))
        }
        let (authenticate, security) = try client.authenticate(challengeBytes: Array(challenge))
        let second = try connection.roundTrip(headers: commonHeaders + [("Authorization", "Negotiate " + Data(authenticate).base64EncodedString())],
                                              body: [], readTimeout: .seconds(30))
        guard second.status != 401 else {
            connection.close()
            throw KilnError(.external, "\(options.endpoint) refused the credentials of \(options.username) (NTLM, HTTP 401)")
        }
        session = security
    }

    private func encrypt(_ plain: [UInt8], with security: NTLMSessionSecurity) -> [UInt8] {
        let (sealed, signature) = security.seal(plain)
        let head = "--\(Self.boundary)\r\n\tContent-Type: \(Self.encryptedType)\r\n"
            + "\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=\(plain.count)\r\n"
            + "--\(Self.boundary)\r\n\tContent-Type: application/octet-stream\r\n"
        return Array(head.utf8) + NTLMWire.u32(UInt32(signature.count)) + signature + sealed + Array("--\(Self.boundary)--\r\n".utf8)
    }

    private func decrypt(_ body: [UInt8], with security: NTLMSessionSecurity) throws(KilnError) -> [UInt8] {
        let text = String(decoding: body.prefix(1024), as: UTF8.self)
        guard let lengthRange = text.range(of: "Length="),
              let length = Int(text[lengthRange.upperBound...].prefix { $0.isNumber }) else {
            throw KilnError(.external, "\(options.endpoint): the encrypted response has no OriginalContent length")
        }
        let marker = Array("application/octet-stream\r\n".utf8)
        guard let start = Self.find(marker, in: body) else {
            throw KilnError(.external, "\(options.endpoint): the encrypted response has no application/octet-stream part")
        }
        var at = start + marker.count
        guard body.count >= at + 4 else { throw KilnError(.external, "\(options.endpoint): the encrypted response is truncated") }
        let signatureLength = Int(NTLMWire.readU32(body, at))
        at += 4
        guard signatureLength == 16, body.count >= at + signatureLength + length else {
            throw KilnError(.external, "\(options.endpoint): the encrypted response is truncated or its signature is not 16 bytes")
        }
        let signature = Array(body[at..<at + 16])
        let sealed = Array(body[at + 16..<at + 16 + length])
        return try security.unseal(sealed, signature: signature)
    }

    static func find(_ needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        for index in 0...(haystack.count - needle.count) where haystack[index] == needle[0] {
            if Array(haystack[index..<index + needle.count]) == needle { return index }
        }
        return nil
    }

    /// Sends an envelope and returns the parsed reply. Connection failures are retried (with a new connection and a
    /// new authentication) while connecting, and after a request was sent only if `idempotent`.
    private func postBlocking(_ envelope: String, idempotent: Bool, readTimeout: Duration) throws(KilnError) -> Reply {
        var attempt = 0
        while true {
            attempt += 1
            var sent = false
            do throws(KilnError) {
                if !connection.isOpen || (options.auth == .ntlm && session == nil) { try connect() }
                var headers = commonHeaders
                var body = Array(envelope.utf8)
                if options.encrypts, let session {
                    body = encrypt(body, with: session)
                    headers = [("User-Agent", "Kiln WinRM client"),
                               ("Content-Type", "multipart/encrypted;protocol=\"\(Self.encryptedType)\";boundary=\"\(Self.boundary)\"")]
                } else if options.auth == .basic {
                    headers.append(("Authorization", "Basic " + Data("\(options.username):\(options.password)".utf8).base64EncodedString()))
                }
                sent = true
                let response = try connection.roundTrip(headers: headers, body: body, readTimeout: readTimeout)
                if response.status == 401 {
                    connection.close()
                    session = nil
                    if options.auth == .ntlm && attempt <= options.retries && idempotent { continue }
                    let hint = options.auth == .basic ? "; Basic must be enabled on the service (winrm set winrm/config/service/auth @{Basic=\"true\"})"
                        + (options.endpoint.secure ? "" : " and, over HTTP, AllowUnencrypted") : ""
                    throw KilnError(.external, "\(options.endpoint) refused the credentials of \(options.username) (\(options.auth.rawValue), HTTP 401)\(hint)")
                }
                var payload = response.body
                if response.header("Content-Type")?.lowercased().hasPrefix("multipart/encrypted") == true {
                    guard let session else { throw KilnError(.external, "\(options.endpoint) sent an encrypted response without an NTLM session") }
                    payload = try decrypt(payload, with: session)
                }
                guard !payload.isEmpty else {
                    throw KilnError(.external, "\(options.endpoint) answered HTTP \(response.status) \(response.reason) with an empty body"
                                    + (response.status == 500 && options.auth == .basic && !options.endpoint.secure ? " (Basic over HTTP needs AllowUnencrypted on the service)" : ""))
                }
                let root = try XMLElementNode.parse(payload)
                if let fault = WSManFault(root, httpStatus: response.status) { return .fault(fault) }
                guard (200..<300).contains(response.status) else {
                    throw KilnError(.external, "\(options.endpoint) answered HTTP \(response.status) \(response.reason)")
                }
                return .ok(root)
            } catch {
                guard error.code == .connection else { throw error }
                connection.close()
                session = nil
                if abortRequested.withLock({ let was = $0; $0 = false; return was }) { throw KilnError(.cancelled, "canceled") }
                guard attempt <= options.retries, !sent || idempotent else { throw error }
                Thread.sleep(forTimeInterval: min(8, 0.5 * pow(2, Double(attempt - 1))))
            }
        }
    }

    func post(_ action: WSMan.Action, shellID: String? = nil, options extra: [(String, String)] = [], body: String,
              idempotent: Bool) async throws(KilnError) -> Reply {
        let envelope = WSMan.envelope(to: options.endpoint.description, action: action, operationTimeout: options.operationTimeout,
                                      maxEnvelopeSize: options.maxEnvelopeSize, shellID: shellID, options: extra, body: body)
        let readTimeout = options.operationTimeout + .seconds(30)
        if Task.isCancelled { throw KilnError(.cancelled, "canceled") }
        abortRequested.withLock { $0 = false }
        let result: Result<Reply, KilnError> = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                queue.async {
                    do throws(KilnError) {
                        continuation.resume(returning: .success(try self.postBlocking(envelope, idempotent: idempotent, readTimeout: readTimeout)))
                    } catch {
                        continuation.resume(returning: .failure(error))
                    }
                }
            }
        } onCancel: {
            abortRequested.withLock { $0 = true }
            connection.abort()
        }
        return try result.get()
    }

    private func expectOK(_ reply: Reply, _ what: String) throws(KilnError) -> XMLElementNode {
        switch reply {
        case .ok(let root): return root
        case .fault(let fault): throw KilnError(.external, "\(what) on \(options.endpoint) failed: \(fault)")
        }
    }

    // MARK: Shell operations

    public func createShell(workingDirectory: String? = nil, environment: [String: String] = [:]) async throws(KilnError) -> String {
        let reply = try await post(.create, options: [("WINRS_NOPROFILE", "FALSE"), ("WINRS_CODEPAGE", "65001")],
                                   body: WSMan.createShellBody(workingDirectory: workingDirectory, environment: environment), idempotent: true)
        let root = try expectOK(reply, "creating a shell")
        if let id = root.first("ShellId")?.trimmedText, !id.isEmpty { return id }
        if let selector = root.all("Selector").first(where: { $0.attributes["Name"] == "ShellId" }) { return selector.trimmedText }
        throw KilnError(.external, "\(options.endpoint) created a shell but named no ShellId")
    }

    /// `consoleStdin` false makes stdin a pipe (no console line editing or line-length limit), for streamed data.
    public func startCommand(shellID: String, command: String, arguments: [String] = [], consoleStdin: Bool = true) async throws(KilnError) -> String {
        let reply = try await post(.command, shellID: shellID, options: [("WINRS_CONSOLEMODE_STDIN", consoleStdin ? "TRUE" : "FALSE"), ("WINRS_SKIP_CMD_SHELL", "FALSE")],
                                   body: WSMan.commandBody(command, arguments: arguments), idempotent: false)
        let root = try expectOK(reply, "starting a command")
        guard let id = root.first("CommandId")?.trimmedText, !id.isEmpty else {
            throw KilnError(.external, "\(options.endpoint) started a command but named no CommandId")
        }
        return id
    }

    public func send(shellID: String, commandID: String, bytes: [UInt8], end: Bool) async throws(KilnError) {
        let reply = try await post(.send, shellID: shellID, body: WSMan.sendBody(commandID: commandID, bytes: bytes, end: end), idempotent: false)
        _ = try expectOK(reply, "sending input")
    }

    /// One Receive. A w:TimedOut fault (no output within OperationTimeout) is an empty result, not a failure.
    public func receive(shellID: String, commandID: String) async throws(KilnError) -> ReceiveResult {
        let reply = try await post(.receive, shellID: shellID, options: [("WSMAN_CMDSHELL_OPTION_KEEPALIVE", "TRUE")],
                                   body: WSMan.receiveBody(commandID: commandID), idempotent: true)
        switch reply {
        case .ok(let root): return ReceiveResult(root)
        case .fault(let fault) where fault.isTimedOut: return ReceiveResult()
        case .fault(let fault): throw KilnError(.external, "receiving output on \(options.endpoint) failed: \(fault)")
        }
    }

    public func signal(shellID: String, commandID: String, code: String = WSMan.signalTerminate) async throws(KilnError) {
        let reply = try await post(.signal, shellID: shellID, body: WSMan.signalBody(commandID: commandID, code: code), idempotent: true)
        _ = try expectOK(reply, "signalling a command")
    }

    public func deleteShell(_ shellID: String) async throws(KilnError) {
        let reply = try await post(.delete, shellID: shellID, body: "", idempotent: true)
        _ = try expectOK(reply, "deleting a shell")
    }

    /// The largest stdin slice one Send carries within MaxEnvelopeSize (base64 grows it by a third).
    var maxSendBytes: Int { max(1024, (options.maxEnvelopeSize - 4096) / 4 * 3) }

    /// Runs one cmd.exe command line in a new shell, streaming its output; the shell is deleted afterwards.
    /// A connection lost for good while the command runs is the `.disconnected` outcome (a restart, usually).
    public func run(_ command: String, stdin: [UInt8]? = nil, output: @escaping @Sendable (OutputChunk) -> Void) async throws(KilnError) -> ExecResult {
        guard let stdin else { return try await run(command, input: nil, output: output) }
        let pending = Locked<[UInt8]?>(stdin)
        return try await run(command, input: { () throws(KilnError) -> [UInt8]? in
            pending.withLock { piece in
                defer { piece = nil }
                return piece
            }
        }, output: output)
    }

    /// Like `run(_:stdin:output:)`, with stdin pulled from `input` piece by piece (nil: the end) and sent in
    /// Send messages that each fit the envelope size.
    public func run(_ command: String, input: (@Sendable () throws(KilnError) -> [UInt8]?)?,
                    output: @escaping @Sendable (OutputChunk) -> Void) async throws(KilnError) -> ExecResult {
        let shellID = try await createShell()
        let commandID: String
        do throws(KilnError) {
            commandID = try await startCommand(shellID: shellID, command: command, consoleStdin: input == nil)
        } catch where error.code == .connection {
            return ExecResult(.disconnected(error.message))
        } catch {
            try? await deleteShell(shellID)
            throw error
        }
        do throws(KilnError) {
            if let input {
                var next = try input()
                while let piece = next {
                    var offset = 0
                    next = try input()
                    repeat {
                        let end = min(piece.count, offset + maxSendBytes)
                        try await send(shellID: shellID, commandID: commandID, bytes: Array(piece[offset..<end]), end: next == nil && end == piece.count)
                        offset = end
                    } while offset < piece.count
                }
            }
            while true {
                let result = try await receive(shellID: shellID, commandID: commandID)
                for chunk in result.chunks {
                    output(OutputChunk(stream: chunk.stream == "stderr" ? .stderr : .stdout, bytes: chunk.bytes))
                }
                if result.done {
                    try? await deleteShell(shellID)
                    return ExecResult(.exited(result.exitCode ?? 0))
                }
            }
        } catch where error.code == .connection {
            return ExecResult(.disconnected(error.message))
        } catch where error.code == .cancelled {
            // Best effort, on a fresh task: stop the command and free the shell.
            let client = self
            await Task.detached {
                try? await client.signal(shellID: shellID, commandID: commandID)
                try? await client.deleteShell(shellID)
            }.value
            throw error
        } catch {
            try? await signal(shellID: shellID, commandID: commandID)
            try? await deleteShell(shellID)
            throw error
        }
    }
}
