import Foundation
import KilnSupport

#if canImport(FoundationXML)
import FoundationXML
#endif

/// WS-Management messages for the Windows Remote Shell (MS-WSMV 3.1.4.1): Create, Command, Send, Receive, Signal,
/// Delete, and the parsing of their responses and faults.
public enum WSMan {
    public static let shellResource = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
    static let shellNamespace = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
    public enum Action: String, Sendable {
        case create = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create"
        case delete = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete"
        case command = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Command"
        case send = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Send"
        case receive = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Receive"
        case signal = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Signal"
    }
    public static let commandDone = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done"
    public static let signalTerminate = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/terminate"
    public static let signalCtrlC = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/ctrl_c"
    /// ERROR_WSMAN_OPERATION_TIMEDOUT: a Receive found no output within OperationTimeout. Poll again.
    public static let timedOutCode = "2150858793"

    /// A complete SOAP envelope. `options` become a w:OptionSet, `shellID` a ShellId selector.
    public static func envelope(to endpoint: String, action: Action, operationTimeout: Duration, maxEnvelopeSize: Int = 153_600,
                                shellID: String? = nil, options: [(String, String)] = [], body: String,
                                messageID: UUID = UUID()) -> String {
        var header = """
        <a:To>\(XMLText.escape(endpoint))</a:To>\
        <a:ReplyTo><a:Address s:mustUnderstand="true">http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:Address></a:ReplyTo>\
        <w:MaxEnvelopeSize s:mustUnderstand="true">\(maxEnvelopeSize)</w:MaxEnvelopeSize>\
        <a:MessageID>uuid:\(messageID.uuidString)</a:MessageID>\
        <w:Locale xml:lang="en-US" s:mustUnderstand="false"/>\
        <p:DataLocale xml:lang="en-US" s:mustUnderstand="false"/>\
        <w:OperationTimeout>PT\(max(1, Int(operationTimeout.inSeconds))).000S</w:OperationTimeout>\
        <w:ResourceURI s:mustUnderstand="true">\(shellResource)</w:ResourceURI>\
        <a:Action s:mustUnderstand="true">\(action.rawValue)</a:Action>
        """
        if !options.isEmpty {
            header += "<w:OptionSet>" + options.map { "<w:Option Name=\"\(XMLText.escape($0.0))\">\(XMLText.escape($0.1))</w:Option>" }.joined() + "</w:OptionSet>"
        }
        if let shellID {
            header += "<w:SelectorSet><w:Selector Name=\"ShellId\">\(XMLText.escape(shellID))</w:Selector></w:SelectorSet>"
        }
        return """
        <?xml version="1.0" encoding="utf-8"?>\
        <s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" \
        xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd" \
        xmlns:rsp="\(shellNamespace)">\
        <s:Header>\(header)</s:Header><s:Body>\(body)</s:Body></s:Envelope>
        """
    }

    public static func createShellBody(workingDirectory: String? = nil, environment: [String: String] = [:]) -> String {
        var body = "<rsp:Shell>"
        if !environment.isEmpty {
            body += "<rsp:Environment>" + environment.sorted { $0.key < $1.key }
                .map { "<rsp:Variable Name=\"\(XMLText.escape($0.key))\">\(XMLText.escape($0.value))</rsp:Variable>" }.joined() + "</rsp:Environment>"
        }
        if let workingDirectory { body += "<rsp:WorkingDirectory>\(XMLText.escape(workingDirectory))</rsp:WorkingDirectory>" }
        return body + "<rsp:InputStreams>stdin</rsp:InputStreams><rsp:OutputStreams>stdout stderr</rsp:OutputStreams></rsp:Shell>"
    }

    public static func commandBody(_ command: String, arguments: [String] = []) -> String {
        "<rsp:CommandLine><rsp:Command>\(XMLText.escape(command))</rsp:Command>"
            + arguments.map { "<rsp:Arguments>\(XMLText.escape($0))</rsp:Arguments>" }.joined() + "</rsp:CommandLine>"
    }

    public static func sendBody(commandID: String, bytes: [UInt8], end: Bool) -> String {
        "<rsp:Send><rsp:Stream Name=\"stdin\" CommandId=\"\(XMLText.escape(commandID))\"\(end ? " End=\"true\"" : "")>"
            + Data(bytes).base64EncodedString() + "</rsp:Stream></rsp:Send>"
    }

    public static func receiveBody(commandID: String) -> String {
        "<rsp:Receive><rsp:DesiredStream CommandId=\"\(XMLText.escape(commandID))\">stdout stderr</rsp:DesiredStream></rsp:Receive>"
    }

    public static func signalBody(commandID: String, code: String) -> String {
        "<rsp:Signal CommandId=\"\(XMLText.escape(commandID))\"><rsp:Code>\(XMLText.escape(code))</rsp:Code></rsp:Signal>"
    }
}

/// A parsed XML element: local name, attributes by local name, children, text.
public final class XMLElementNode: @unchecked Sendable {
    public let name: String
    public let attributes: [String: String]
    public internal(set) var children: [XMLElementNode] = []
    public internal(set) var text = ""

    init(name: String, attributes: [String: String]) {
        self.name = name
        self.attributes = attributes
    }

    /// Every descendant (self included) with this local name, in document order.
    public func all(_ name: String) -> [XMLElementNode] {
        (self.name == name ? [self] : []) + children.flatMap { $0.all(name) }
    }

    public func first(_ name: String) -> XMLElementNode? {
        if self.name == name { return self }
        for child in children {
            if let found = child.first(name) { return found }
        }
        return nil
    }

    public var trimmedText: String { text.trimmingCharacters(in: .whitespacesAndNewlines) }

    /// Elements nested deeper are an error: a SOAP envelope is a handful of levels deep, and the tree's readers (and
    /// its release) recurse once per level, so a hostile reply nested 100,000 deep would overflow the stack.
    public static let maximumDepth = 256

    /// Parses a document with namespaces processed (names are local names). A document type declaration is
    /// refused before parsing: SOAP forbids one (SOAP 1.2 part 1, 5), and its entities are how a small reply
    /// expands to gigabytes.
    public static func parse(_ data: [UInt8]) throws(KilnError) -> XMLElementNode {
        if let marker = firstDeclaration(in: data) {
            throw KilnError(.external, "the WinRM response holds \(marker.description) at byte \(marker.offset), which SOAP forbids; refused: \(String(decoding: data.prefix(200), as: UTF8.self))")
        }
        let delegate = TreeBuilder()
        let parser = XMLParser(data: Data(data))
        parser.shouldProcessNamespaces = true
        parser.shouldResolveExternalEntities = false
        parser.delegate = delegate
        let parsed = parser.parse()
        if delegate.tooDeep {
            // Release the partial tree one level at a time, not by recursion.
            delegate.dismantle()
            throw KilnError(.external, "the WinRM response nests elements more than \(maximumDepth) levels deep; refused: \(String(decoding: data.prefix(200), as: UTF8.self))")
        }
        guard parsed, let root = delegate.root else {
            delegate.dismantle()
            let reason = parser.parserError.map { "\($0.localizedDescription)" } ?? "no root element"
            throw KilnError(.external, "the WinRM response is not well-formed XML (\(reason)): \(String(decoding: data.prefix(200), as: UTF8.self))")
        }
        return root
    }

    /// `<!DOCTYPE` or `<!ENTITY`, wherever it is (ASCII case-insensitive), with its byte offset.
    private static func firstDeclaration(in data: [UInt8]) -> (description: String, offset: Int)? {
        let markers = ["<!DOCTYPE", "<!ENTITY"].map { Array($0.utf8) }
        var index = 0
        while index + 2 < data.count {
            if data[index] == UInt8(ascii: "<"), data[index + 1] == UInt8(ascii: "!") {
                for marker in markers where index + marker.count <= data.count {
                    if zip(data[index..<index + marker.count], marker).allSatisfy({ $0 == $1 || $0 ^ 0x20 == $1 }) {
                        return (String(decoding: marker.dropFirst(2), as: UTF8.self) == "DOCTYPE" ? "a document type declaration" : "an entity declaration", index)
                    }
                }
            }
            index += 1
        }
        return nil
    }

    private final class TreeBuilder: NSObject, XMLParserDelegate {
        var root: XMLElementNode?
        var stack: [XMLElementNode] = []
        var tooDeep = false

        /// Empties the tree from the leaves up, so that no release recurses deeply.
        func dismantle() {
            stack = []
            guard let root else { return }
            var pending = [root]
            while let node = pending.popLast() {
                pending += node.children
                node.children = []
            }
            self.root = nil
        }

        func parser(_ parser: XMLParser, didStartElement elementName: String, namespaceURI: String?, qualifiedName: String?,
                    attributes: [String: String]) {
            guard stack.count < XMLElementNode.maximumDepth else {
                tooDeep = true
                parser.abortParsing()
                return
            }
            var local: [String: String] = [:]
            for (key, value) in attributes {
                local[String(key.split(separator: ":").last ?? Substring(key))] = value
            }
            let node = XMLElementNode(name: elementName, attributes: local)
            if let parent = stack.last { parent.children.append(node) } else { root = node }
            stack.append(node)
        }

        func parser(_ parser: XMLParser, didEndElement elementName: String, namespaceURI: String?, qualifiedName: String?) {
            _ = stack.popLast()
        }

        func parser(_ parser: XMLParser, foundCharacters string: String) {
            stack.last?.text += string
        }
    }
}

/// A SOAP fault from the service: its subcode, the WSManFault code and the message.
public struct WSManFault: Error, Sendable, CustomStringConvertible {
    public var subcode: String
    public var code: String?
    public var reason: String
    public var httpStatus: Int

    public var isTimedOut: Bool { subcode.hasSuffix("TimedOut") || code == WSMan.timedOutCode }

    public var description: String {
        "WinRM fault \(subcode)\(code.map { " (\($0))" } ?? ""): \(reason)"
    }

    /// The fault in a response document, if it is one.
    public init?(_ root: XMLElementNode, httpStatus: Int) {
        guard let fault = root.first("Fault") else { return nil }
        let values = fault.first("Code")?.all("Value").map(\.trimmedText) ?? []
        subcode = values.last.map { String($0.split(separator: ":").last ?? Substring($0)) } ?? "unknown"
        let wsmanFault = fault.first("WSManFault")
        code = wsmanFault?.attributes["Code"]
        let message = wsmanFault?.first("Message")?.all("Message").last?.trimmedText
        let providerMessage = wsmanFault?.first("ProviderFault")?.trimmedText
        reason = [message, providerMessage, fault.first("Reason")?.first("Text")?.trimmedText]
            .compactMap { $0 }.first { !$0.isEmpty } ?? "no reason given"
        self.httpStatus = httpStatus
    }

    public init(subcode: String, code: String?, reason: String, httpStatus: Int) {
        self.subcode = subcode
        self.code = code
        self.reason = reason
        self.httpStatus = httpStatus
    }
}

/// What one Receive returned: output chunks in order, and the exit code once the command is done.
public struct ReceiveResult: Sendable {
    public var chunks: [(stream: String, bytes: [UInt8])] = []
    public var done = false
    public var exitCode: Int32?

    public init(_ root: XMLElementNode) {
        for stream in root.all("Stream") {
            let text = stream.trimmedText
            guard !text.isEmpty, let data = Data(base64Encoded: text) else { continue }
            chunks.append((stream.attributes["Name"] ?? "stdout", Array(data)))
        }
        if let state = root.first("CommandState") {
            done = state.attributes["State"] == WSMan.commandDone
            exitCode = state.first("ExitCode").flatMap { Int32($0.trimmedText) ?? Int64($0.trimmedText).map { Int32(truncatingIfNeeded: $0) } }
        }
    }

    public init() {}
}
