import Foundation
import KilnSupport
import KilnWinRM
import NIOCore
import NIOHTTP1
import NIOPosix

#if canImport(FoundationXML)
import FoundationXML
#endif

/// A WS-Management server for the Windows Remote Shell (MS-WSMV) on 127.0.0.1, for tests: it checks envelopes
/// strictly (addressing headers, resource URI, selectors, OperationTimeout, MaxEnvelopeSize), authenticates with
/// Basic or NTLMv2 (with message encryption on HTTP), and runs each command it receives with /bin/sh on this host,
/// streaming stdout and stderr back through Receive with CommandState and ExitCode. HTTP parsing is SwiftNIO's,
/// independent of the client's.
public final class WinRMTestServer: @unchecked Sendable {
    public enum Auth: Sendable {
        case basic
        case ntlm
    }

    public private(set) var port = 0
    public let auth: Auth
    public let username: String
    public let password: String
    /// Maps a command line before /bin/sh runs it (a test stands in for what PowerShell would do).
    public var translate: (@Sendable (String) -> String)?
    /// Returns true to drop the connection instead of answering (request number from 1, action name).
    public var dropRequest: (@Sendable (Int, String) -> Bool)?
    /// The service is reached through a TLS terminator: NTLM messages are not encrypted.
    public var behindTLS = false
    public let maxEnvelopeSize = 153_600

    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private var channel: (any Channel)?
    private let lock = NSLock()
    private var shells: [String: TestShell] = [:]
    private var requestCount = 0
    private var actionLog: [String] = []
    private var connectionCount = 0

    public init(auth: Auth, username: String = "kiln", password: String = "Pa$$w0rd'\"é") throws {
        self.auth = auth
        self.username = username
        self.password = password
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
        let serverBox = Unowned()
        let channel = try bootstrap.childChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                try channel.pipeline.syncOperations.addHandler(WSManHandler(server: serverBox.server!))
            }
        }.bind(host: "127.0.0.1", port: 0).wait()
        self.channel = channel
        port = channel.localAddress?.port ?? 0
        serverBox.server = self
    }

    private final class Unowned: @unchecked Sendable {
        weak var server: WinRMTestServer?
    }

    public var url: String { "http://127.0.0.1:\(port)/wsman" }

    /// Every action received, by its last path component (Create, Command, Receive, …), and "TimedOut" for each
    /// Receive answered with the timeout fault.
    public var actions: [String] { lock.withLock { actionLog } }
    public var connections: Int { lock.withLock { connectionCount } }
    public var openShells: Int { lock.withLock { shells.count } }

    public func stop() {
        try? channel?.close().wait()
        channel = nil
        lock.withLock {
            for shell in shells.values { shell.terminateAll() }
            shells = [:]
        }
        try? group.syncShutdownGracefully()
    }

    func connectionOpened() { lock.withLock { connectionCount += 1 } }

    // MARK: Requests

    enum Reply {
        case drop
        case http(status: Int, headers: [(String, String)], body: [UInt8])
    }

    final class Connection: @unchecked Sendable {
        let queue = DispatchQueue(label: "winrm-test-connection")
        var acceptor: NTLMAcceptor?
        var security: NTLMSessionSecurity?
    }

    func respond(method: String, uri: String, headers: HTTPHeaders, body: [UInt8], connection: Connection) -> Reply {
        let number = lock.withLock { requestCount += 1; return requestCount }
        guard method == "POST", uri == "/wsman" else { return .http(status: 404, headers: [], body: []) }
        let authorization = headers["Authorization"].first ?? ""
        var plain = body
        var encrypted = false
        switch auth {
        case .basic:
            let expected = "Basic " + Data("\(username):\(password)".utf8).base64EncodedString()
            guard authorization == expected else {
                return .http(status: 401, headers: [("WWW-Authenticate", "Basic realm=\"WSMAN\"")], body: [])
            }
        case .ntlm:
            if authorization.hasPrefix("Negotiate "), let token = Data(base64Encoded: String(authorization.dropFirst(10))) {
                let bytes = Array(token)
                if bytes.count > 8, bytes[8] == 1 {
                    let acceptor = NTLMAcceptor(passwords: [username: password])
                    connection.acceptor = acceptor
                    connection.security = nil
                    guard let challenge = try? acceptor.challenge(for: bytes) else { return .http(status: 400, headers: [], body: []) }
                    return .http(status: 401, headers: [("WWW-Authenticate", "Negotiate " + Data(challenge).base64EncodedString())], body: [])
                }
                guard let acceptor = connection.acceptor, let security = try? acceptor.accept(bytes) else {
                    connection.acceptor = nil
                    return .http(status: 401, headers: [("WWW-Authenticate", "Negotiate")], body: [])
                }
                connection.security = security
                if body.isEmpty { return .http(status: 200, headers: [], body: []) }
            }
            guard let security = connection.security else {
                return .http(status: 401, headers: [("WWW-Authenticate", "Negotiate"), ("WWW-Authenticate", "Kerberos")], body: [])
            }
            let contentType = headers["Content-Type"].first ?? ""
            if contentType.hasPrefix("multipart/encrypted") {
                guard contentType.contains("protocol=\"application/HTTP-SPNEGO-session-encrypted\""),
                      let opened = Self.openEncrypted(body, security: security) else {
                    return .http(status: 400, headers: [], body: [])
                }
                plain = opened
                encrypted = true
            } else if !behindTLS {
                // AllowUnencrypted is false, as on a default Windows service.
                return .http(status: 400, headers: [], body: Array("unencrypted traffic is not allowed".utf8))
            }
        }
        let (status, xml, action) = handle(envelope: plain)
        lock.withLock { actionLog.append(action) }
        if let dropRequest, dropRequest(number, action) { return .drop }
        var payload = Array(xml.utf8)
        var replyHeaders = [("Content-Type", "application/soap+xml;charset=UTF-8")]
        if encrypted, let security = connection.security {
            payload = Self.sealEncrypted(payload, security: security)
            replyHeaders = [("Content-Type", "multipart/encrypted;protocol=\"application/HTTP-SPNEGO-session-encrypted\";boundary=\"Encrypted Boundary\"")]
        }
        return .http(status: status, headers: replyHeaders, body: payload)
    }

    static func openEncrypted(_ body: [UInt8], security: NTLMSessionSecurity) -> [UInt8]? {
        let marker = Array("\tContent-Type: application/octet-stream\r\n".utf8)
        let text = String(decoding: body.prefix(512), as: UTF8.self)
        guard text.hasPrefix("--Encrypted Boundary\r\n\tContent-Type: application/HTTP-SPNEGO-session-encrypted\r\n\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length="),
              let lengthText = text.components(separatedBy: "Length=").dropFirst().first?.prefix(while: \.isNumber), let length = Int(lengthText) else { return nil }
        var start: Int?
        for index in 0...(body.count - marker.count) where Array(body[index..<index + marker.count]) == marker {
            start = index + marker.count
            break
        }
        guard let start, body.count >= start + 4 + 16 + length else { return nil }
        let signatureLength = Int(body[start]) | Int(body[start + 1]) << 8
        guard signatureLength == 16 else { return nil }
        let trailer = Array("--Encrypted Boundary--\r\n".utf8)
        guard Array(body.suffix(trailer.count)) == trailer, body.count == start + 4 + 16 + length + trailer.count else { return nil }
        return try? security.unseal(Array(body[start + 20..<start + 20 + length]), signature: Array(body[start + 4..<start + 20]))
    }

    static func sealEncrypted(_ plain: [UInt8], security: NTLMSessionSecurity) -> [UInt8] {
        let (sealed, signature) = security.seal(plain)
        let head = "--Encrypted Boundary\r\n\tContent-Type: application/HTTP-SPNEGO-session-encrypted\r\n"
            + "\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=\(plain.count)\r\n"
            + "--Encrypted Boundary\r\n\tContent-Type: application/octet-stream\r\n"
        return Array(head.utf8) + [16, 0, 0, 0] + signature + sealed + Array("--Encrypted Boundary--\r\n".utf8)
    }

    // MARK: WS-Management

    static let shellURI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"

    func envelope(action: String, relatesTo: String, body: String) -> String {
        """
        <s:Envelope xml:lang="en-US" xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" \
        xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" \
        xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell" xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd">\
        <s:Header><a:Action>\(action)</a:Action><a:MessageID>uuid:\(UUID().uuidString)</a:MessageID>\
        <a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To><a:RelatesTo>\(relatesTo)</a:RelatesTo></s:Header>\
        <s:Body>\(body)</s:Body></s:Envelope>
        """
    }

    func fault(_ subcode: String, code: String, message: String, relatesTo: String, sender: Bool = true) -> String {
        envelope(action: "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault", relatesTo: relatesTo, body: """
        <s:Fault><s:Code><s:Value>\(sender ? "s:Sender" : "s:Receiver")</s:Value><s:Subcode><s:Value>\(subcode)</s:Value></s:Subcode></s:Code>\
        <s:Reason><s:Text xml:lang="">\(XMLText.escape(message))</s:Text></s:Reason><s:Detail>\
        <f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" Code="\(code)" Machine="127.0.0.1">\
        <f:Message>\(XMLText.escape(message))</f:Message></f:WSManFault></s:Detail></s:Fault>
        """)
    }

    /// (HTTP status, response envelope, action name for the log)
    func handle(envelope data: [UInt8]) -> (Int, String, String) {
        guard data.count <= maxEnvelopeSize else {
            return (400, fault("w:EncodingLimit", code: "2150858817", message: "The envelope is \(data.count) bytes, over MaxEnvelopeSize", relatesTo: ""), "EncodingLimit")
        }
        guard let root = try? XMLElementNode.parse(data), root.name == "Envelope", let header = root.first("Header"), let body = root.first("Body") else {
            return (400, fault("a:InvalidMessageInformationHeader", code: "2150858757", message: "not a SOAP envelope", relatesTo: ""), "Invalid")
        }
        let messageID = header.first("MessageID")?.trimmedText ?? ""
        func bad(_ message: String) -> (Int, String, String) {
            (400, fault("a:InvalidMessageInformationHeader", code: "2150858757", message: message, relatesTo: messageID), "Invalid")
        }
        guard messageID.hasPrefix("uuid:"), UUID(uuidString: String(messageID.dropFirst(5))) != nil else { return bad("MessageID must be uuid:GUID") }
        // Windows does not compare a:To with its own address (pywinrm sends a placeholder host); it must be a URL.
        guard let to = header.first("To")?.trimmedText, to.hasPrefix("http://") || to.hasPrefix("https://") else {
            return bad("To must be the endpoint URL, found \(header.first("To")?.trimmedText ?? "none")")
        }
        guard header.first("ReplyTo")?.first("Address")?.trimmedText == "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous" else {
            return bad("ReplyTo/Address must be the anonymous role")
        }
        guard header.first("ResourceURI")?.trimmedText == Self.shellURI else { return bad("ResourceURI must be the cmd shell") }
        guard let maxSize = header.first("MaxEnvelopeSize").flatMap({ Int($0.trimmedText) }), maxSize >= 8192 else {
            return bad("MaxEnvelopeSize missing")
        }
        guard let timeoutText = header.first("OperationTimeout")?.trimmedText, timeoutText.hasPrefix("PT"), timeoutText.hasSuffix("S"),
              let timeout = Double(timeoutText.dropFirst(2).dropLast()) else { return bad("OperationTimeout must be PTnS") }
        let action = header.first("Action")?.trimmedText ?? ""
        let name = String(action.split(separator: "/").last ?? "")
        let options = Dictionary(header.all("Option").map { ($0.attributes["Name"] ?? "", $0.trimmedText) }, uniquingKeysWith: { $1 })
        let shellID = header.all("Selector").first { $0.attributes["Name"] == "ShellId" }?.trimmedText
        let shell = shellID.flatMap { id in lock.withLock { shells[id] } }
        let ns = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
        if name != "Create", shell == nil {
            return (500, fault("w:InvalidSelectors", code: "2150858843", message: "The request for the Windows Remote Shell with ShellId \(shellID ?? "(none)") failed because the shell was not found on the server.", relatesTo: messageID), name)
        }
        switch action {
        case "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create":
            guard let shellElement = body.first("Shell"), shellElement.first("InputStreams")?.trimmedText == "stdin",
                  shellElement.first("OutputStreams")?.trimmedText == "stdout stderr" else { return bad("Create needs a Shell with streams") }
            guard options["WINRS_CODEPAGE"].map({ Int($0) != nil }) ?? true else { return bad("WINRS_CODEPAGE must be a number") }
            let id = UUID().uuidString
            lock.withLock { shells[id] = TestShell(id: id) }
            return (200, envelope(action: "http://schemas.xmlsoap.org/ws/2004/09/transfer/CreateResponse", relatesTo: messageID, body: """
            <x:ResourceCreated><a:Address>\(url)</a:Address><a:ReferenceParameters><w:ResourceURI>\(Self.shellURI)</w:ResourceURI>\
            <w:SelectorSet><w:Selector Name="ShellId">\(id)</w:Selector></w:SelectorSet></a:ReferenceParameters></x:ResourceCreated>\
            <rsp:Shell xmlns:rsp="\(ns)"><rsp:ShellId>\(id)</rsp:ShellId><rsp:ResourceUri>\(Self.shellURI)</rsp:ResourceUri>\
            <rsp:InputStreams>stdin</rsp:InputStreams><rsp:OutputStreams>stdout stderr</rsp:OutputStreams></rsp:Shell>
            """), name)
        case "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Command":
            guard let line = body.first("CommandLine"), let command = line.first("Command")?.text else { return bad("Command needs CommandLine/Command") }
            let arguments = line.all("Arguments").map(\.text)
            let full = ([command] + arguments).joined(separator: " ")
            let commandID = UUID().uuidString
            do {
                try shell!.start(id: commandID, command: translate?(full) ?? full, consoleStdin: options["WINRS_CONSOLEMODE_STDIN"] != "FALSE")
            } catch {
                return (500, fault("w:InternalError", code: "2150858752", message: "cannot start: \(error)", relatesTo: messageID, sender: false), name)
            }
            return (200, envelope(action: action + "Response", relatesTo: messageID,
                                  body: "<rsp:CommandResponse><rsp:CommandId>\(commandID)</rsp:CommandId></rsp:CommandResponse>"), name)
        case "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Send":
            guard let stream = body.first("Stream"), stream.attributes["Name"] == "stdin", let commandID = stream.attributes["CommandId"],
                  let command = shell!.command(commandID) else { return bad("Send needs a stdin Stream with a known CommandId") }
            let bytes = stream.trimmedText.isEmpty ? Data() : Data(base64Encoded: stream.trimmedText)
            guard let bytes else { return bad("Send stream is not base64") }
            command.write(Array(bytes), end: stream.attributes["End"] == "true")
            return (200, envelope(action: action + "Response", relatesTo: messageID, body: "<rsp:SendResponse/>"), name)
        case "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Receive":
            guard let desired = body.first("DesiredStream"), desired.trimmedText == "stdout stderr", let commandID = desired.attributes["CommandId"],
                  let command = shell!.command(commandID) else { return bad("Receive needs DesiredStream with a known CommandId") }
            guard let batch = command.receive(within: timeout, limit: maxSize / 2) else {
                lock.withLock { actionLog.append("TimedOut") }
                return (500, fault("w:TimedOut", code: WSMan.timedOutCode, message: "The WS-Management service cannot complete the operation within the time specified in OperationTimeout.",
                                   relatesTo: messageID, sender: false), name)
            }
            var xml = "<rsp:ReceiveResponse>"
            for (stream, bytes) in batch.chunks {
                xml += "<rsp:Stream Name=\"\(stream)\" CommandId=\"\(commandID)\">\(Data(bytes).base64EncodedString())</rsp:Stream>"
            }
            if let exitCode = batch.exitCode {
                xml += "<rsp:Stream Name=\"stdout\" CommandId=\"\(commandID)\" End=\"true\"></rsp:Stream><rsp:Stream Name=\"stderr\" CommandId=\"\(commandID)\" End=\"true\"></rsp:Stream>"
                xml += "<rsp:CommandState CommandId=\"\(commandID)\" State=\"\(WSMan.commandDone)\"><rsp:ExitCode>\(exitCode)</rsp:ExitCode></rsp:CommandState>"
            } else {
                xml += "<rsp:CommandState CommandId=\"\(commandID)\" State=\"http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Running\"></rsp:CommandState>"
            }
            return (200, envelope(action: action + "Response", relatesTo: messageID, body: xml + "</rsp:ReceiveResponse>"), name)
        case "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Signal":
            guard let signal = body.first("Signal"), let commandID = signal.attributes["CommandId"], let code = signal.first("Code")?.trimmedText,
                  let command = shell!.command(commandID) else { return bad("Signal needs a known CommandId and a Code") }
            if code.hasSuffix("/terminate") || code.hasSuffix("/ctrl_c") { command.terminate() }
            lock.withLock { actionLog.append("Signal:" + String(code.split(separator: "/").last ?? "")) }
            return (200, envelope(action: action + "Response", relatesTo: messageID, body: "<rsp:SignalResponse/>"), name)
        case "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete":
            shell!.terminateAll()
            lock.withLock { shells[shellID!] = nil }
            return (200, envelope(action: "http://schemas.xmlsoap.org/ws/2004/09/transfer/DeleteResponse", relatesTo: messageID, body: ""), name)
        default:
            return (500, fault("a:ActionNotSupported", code: "2150858754", message: "unknown action \(action)", relatesTo: messageID), name)
        }
    }
}

final class WSManHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let server: WinRMTestServer
    private let connection = WinRMTestServer.Connection()
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []

    init(server: WinRMTestServer) {
        self.server = server
    }

    func channelActive(context: ChannelHandlerContext) {
        server.connectionOpened()
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            body = []
        case .body(var buffer):
            body += buffer.readBytes(length: buffer.readableBytes) ?? []
        case .end:
            guard let head else { return }
            let channel = context.channel
            let body = self.body
            let (server, connection) = (self.server, self.connection)
            connection.queue.async {
                let reply = server.respond(method: head.method.rawValue, uri: head.uri, headers: head.headers, body: body, connection: connection)
                switch reply {
                case .drop:
                    channel.close(promise: nil)
                case .http(let status, let headers, let payload):
                    var httpHeaders = HTTPHeaders(headers)
                    httpHeaders.add(name: "Content-Length", value: String(payload.count))
                    httpHeaders.add(name: "Server", value: "Microsoft-HTTPAPI/2.0")
                    channel.write(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: status), headers: httpHeaders)), promise: nil)
                    channel.write(HTTPServerResponsePart.body(.byteBuffer(channel.allocator.buffer(bytes: payload))), promise: nil)
                    channel.writeAndFlush(HTTPServerResponsePart.end(nil), promise: nil)
                }
            }
        }
    }
}

/// A shell's commands, each a /bin/sh process with piped streams.
final class TestShell: @unchecked Sendable {
    let id: String
    private let lock = NSLock()
    private var commands: [String: TestCommand] = [:]

    init(id: String) { self.id = id }

    func start(id: String, command: String, consoleStdin: Bool) throws {
        let started = try TestCommand(command: command)
        lock.withLock { commands[id] = started }
    }

    func command(_ id: String) -> TestCommand? { lock.withLock { commands[id] } }

    func terminateAll() {
        for command in lock.withLock({ Array(commands.values) }) { command.terminate() }
    }
}

final class TestCommand: @unchecked Sendable {
    private let process = Process()
    private let stdin = Pipe()
    private let stdout = Pipe()
    private let stderr = Pipe()
    private let lock = NSLock()
    private var buffered: [(String, [UInt8])] = []
    private var finished = false

    init(command: String) throws {
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", command]
        process.standardInput = stdin
        process.standardOutput = stdout
        process.standardError = stderr
        for (pipe, name) in [(stdout, "stdout"), (stderr, "stderr")] {
            pipe.fileHandleForReading.readabilityHandler = { [weak self] handle in
                let data = handle.availableData
                guard let self, !data.isEmpty else { return }
                self.lock.withLock { self.buffered.append((name, Array(data))) }
            }
        }
        try process.run()
    }

    func write(_ bytes: [UInt8], end: Bool) {
        if !bytes.isEmpty { try? stdin.fileHandleForWriting.write(contentsOf: Data(bytes)) }
        if end { try? stdin.fileHandleForWriting.close() }
    }

    func terminate() {
        if process.isRunning { process.terminate() }
    }

    /// Output that arrived, or the end: waits up to `seconds`; nil when there was nothing (the timeout fault).
    func receive(within seconds: Double, limit: Int) -> (chunks: [(String, [UInt8])], exitCode: Int32?)? {
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            let running = process.isRunning
            if !running && !finished {
                // Drain what the pipes still hold once the process is gone.
                for (pipe, name) in [(stdout, "stdout"), (stderr, "stderr")] {
                    pipe.fileHandleForReading.readabilityHandler = nil
                    let rest = pipe.fileHandleForReading.readDataToEndOfFile()
                    if !rest.isEmpty { lock.withLock { buffered.append((name, Array(rest))) } }
                }
                finished = true
            }
            let batch: [(String, [UInt8])] = lock.withLock {
                var taken: [(String, [UInt8])] = []
                var size = 0
                while let first = buffered.first, size < limit {
                    let room = limit - size
                    if first.1.count > room {
                        taken.append((first.0, Array(first.1.prefix(room))))
                        buffered[0].1.removeFirst(room)
                        size = limit
                    } else {
                        taken.append(first)
                        buffered.removeFirst()
                        size += first.1.count
                    }
                }
                return taken
            }
            let drained = lock.withLock { buffered.isEmpty }
            if finished && drained {
                let status = process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
                return (batch, status)
            }
            if !batch.isEmpty { return (batch, nil) }
            if Date() >= deadline { return nil }
            Thread.sleep(forTimeInterval: 0.02)
        }
    }
}
