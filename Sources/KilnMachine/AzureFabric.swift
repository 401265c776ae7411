import Foundation
import KilnSupport
import NIOCore
import NIOHTTP1
import NIOPosix

/// What the build VM's instance metadata says about it: the values AIB's build VM would report, from the
/// template (location, tags, VM size) and the source image.
public struct InstanceMetadata: Sendable, Equatable {
    public var location: String
    public var vmSize: String
    public var tags: [String: String]
    public var publisher: String
    public var offer: String
    public var sku: String
    public var version: String
    public var subscriptionId: String
    public var resourceGroupName: String

    public init(location: String = "westus2", vmSize: String = "Standard_D1_v2", tags: [String: String] = [:], publisher: String = "",
                offer: String = "", sku: String = "", version: String = "",
                subscriptionId: String = "00000000-0000-0000-0000-000000000000", resourceGroupName: String = "IT_kiln") {
        self.location = location
        self.vmSize = vmSize
        self.tags = tags
        self.publisher = publisher
        self.offer = offer
        self.sku = sku
        self.version = version
        self.subscriptionId = subscriptionId
        self.resourceGroupName = resourceGroupName
    }

    /// Every field in a fixed order (tags sorted), for content keys.
    public var canonicalText: String {
        ([location, vmSize, publisher, offer, sku, version, subscriptionId, resourceGroupName]
         + tags.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }).joined(separator: "\n")
    }
}

/// The Azure endpoints a Linux guest talks to, answered by Kiln on the host: the wireserver (168.63.129.16:80, the
/// goal state and health reports that cloud-init's Azure datasource and the Azure Linux agent need to finish
/// provisioning), the host GA plugin (168.63.129.16:32526) and the instance metadata service
/// (169.254.169.254:80). The guest reaches them through QEMU user-mode `guestfwd` rules, each connection handed to
/// a Unix socket this server listens on (docs/azure-presentation.md has the design and the sources).
///
/// What is served is the least the agents need to provision without retries (cloud-init 22.4
/// `sources/DataSourceAzure.py`, `sources/helpers/azure.py`; WALinuxAgent 2.7 `common/protocol/wire.py`,
/// `goal_state.py`): no certificates (cloud-init's report-ready needs none; a key comes from IMDS `publicKeys`),
/// an incarnation that never changes, and no pre-provisioning flags.
public final class AzureFabric: @unchecked Sendable {
    public struct HealthReport: Sendable, Equatable {
        public var state: String
        public var description: String?
        /// The agent's `<SubStatus>` (`Provisioning`, `ProvisioningFailed`, …).
        public var subStatus: String? = nil
    }

    public let socketPath: String
    let metadata: InstanceMetadata
    let vmName: String
    let vmID: String
    let username: String
    let publicKey: String
    let log: @Sendable (String) -> Void
    private let group: MultiThreadedEventLoopGroup
    private var channel: (any Channel)?
    private let lock = NSLock()
    private var reports: [HealthReport] = []
    private var firstReady: ContinuousClock.Instant?
    private var requestCount = 0

    /// The addresses and ports a guest reaches the fabric on.
    public static let wireServer = "168.63.129.16"
    public static let metadataService = "169.254.169.254"
    static let forwardedPorts: [(address: String, port: Int)] = [(metadataService, 80), (wireServer, 80), (wireServer, 32526)]

    public init(socketPath: String, metadata: InstanceMetadata, vmName: String, vmID: String, username: String, publicKey: String,
                log: @escaping @Sendable (String) -> Void) {
        self.socketPath = socketPath
        self.metadata = metadata
        self.vmName = vmName
        self.vmID = vmID.lowercased()
        self.username = username
        self.publicKey = publicKey
        self.log = log
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    }

    /// Listens on `socketPath` (replacing a stale socket file).
    public func start() throws(KilnError) {
        try? FileManager.default.removeItem(atPath: socketPath)
        let box = WeakFabric(self)
        do {
            channel = try ServerBootstrap(group: group)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                        try channel.pipeline.syncOperations.addHandler(FabricHandler(fabric: box))
                    }
                }
                .bind(unixDomainSocketPath: socketPath).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw KilnError(.io, "cannot listen on \(socketPath) for the guest's Azure endpoints", cause: error)
        }
        chmod(socketPath, 0o600)
    }

    /// Idempotent.
    public func stop() {
        let open = lock.withLock { () -> (any Channel)? in
            defer { channel = nil }
            return channel
        }
        try? open?.close().wait()
        try? group.syncShutdownGracefully()
        try? FileManager.default.removeItem(atPath: socketPath)
    }

    /// The health reports the guest sent, oldest first.
    public var healthReports: [HealthReport] { lock.withLock { reports } }
    /// When the guest first reported Ready (the end of its agent's provisioning), on the host's clock.
    public var readyReportedAt: ContinuousClock.Instant? { lock.withLock { firstReady } }
    /// How many requests the guest made.
    public var requests: Int { lock.withLock { requestCount } }

    /// The `guestfwd` rules for QEMU's user-mode network: each guest connection runs `socat`, which joins it to
    /// this server's socket.
    public var guestForwards: [String] {
        Self.forwardedPorts.map { "guestfwd=tcp:\($0.address):\($0.port)-cmd:socat STDIO UNIX-CONNECT:\(socketPath)" }
    }

    // MARK: Answers

    struct Response {
        var status: Int
        var contentType: String
        var body: [UInt8]

        static func xml(_ text: String) -> Response { Response(status: 200, contentType: "text/xml; charset=utf-8", body: Array(text.utf8)) }
        static func json(_ object: Any) -> Response {
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
            return Response(status: 200, contentType: "application/json; charset=utf-8", body: Array(data))
        }
        static func text(_ status: Int, _ text: String) -> Response { Response(status: status, contentType: "text/plain; charset=utf-8", body: Array(text.utf8)) }
    }

    func respond(method: String, uri: String, headers: HTTPHeaders, body: [UInt8]) -> Response {
        lock.withLock { requestCount += 1 }
        let components = URLComponents(string: uri)
        let path = components?.path ?? uri
        let query = Dictionary((components?.queryItems ?? []).map { ($0.name.lowercased(), $0.value ?? "") }, uniquingKeysWith: { $1 })
        if path.hasPrefix("/metadata") {
            return metadataResponse(path: path, query: query, headers: headers)
        }
        switch (method, path, query["comp"]) {
        case ("GET", "/", "versions"):
            return .xml(Self.versions)
        case ("GET", "/machine/", "goalstate"), ("GET", "/machine", "goalstate"):
            return .xml(goalState)
        case ("GET", _, "config") where query["type"] == "hostingEnvironmentConfig":
            return .xml(hostingEnvironmentConfig)
        case ("GET", _, "config") where query["type"] == "sharedConfig":
            return .xml(sharedConfig)
        case ("POST", _, "health"):
            let report = Self.parseHealth(body)
            lock.withLock {
                reports.append(report)
                if report.state == "Ready", firstReady == nil { firstReady = .now }
            }
            log("the guest reported \(report.state) to the wireserver" + (report.description.map { ": \($0)" } ?? ""))
            return Response(status: 200, contentType: "text/xml; charset=utf-8", body: [])
        case ("POST", _, _), ("PUT", _, _):
            // Telemetry, role properties, the host GA plugin's status upload: accepted and dropped.
            return Response(status: 200, contentType: "text/xml; charset=utf-8", body: [])
        case ("GET", "/health", _):
            return .text(200, "")
        default:
            // /vmSettings (Fast Track) and anything else: "not supported", which the agent handles quietly.
            return .text(404, "Not Found")
        }
    }

    /// The instance metadata service: `Metadata: true` required (as Azure's, which answers 400 without it);
    /// `/metadata/instance` and any path into it (`/metadata/instance/compute/location`), as JSON or, with
    /// `format=text`, the value alone.
    func metadataResponse(path: String, query: [String: String], headers: HTTPHeaders) -> Response {
        guard headers.first(name: "Metadata")?.lowercased() == "true" else {
            return .json(["error": "Bad request. Required metadata header not specified"]).with(status: 400)
        }
        guard query["api-version"] != nil else {
            return .json(["error": "Bad request. api-version was not specified in the request"]).with(status: 400)
        }
        let parts = path.split(separator: "/").map(String.init)
        guard parts.count >= 2, parts[0] == "metadata", parts[1] == "instance" else {
            return .json(["error": "Not found"]).with(status: 404)
        }
        var value: Any = instanceDocument
        for part in parts.dropFirst(2) {
            if let object = value as? [String: Any], let next = object[part] {
                value = next
            } else if let array = value as? [Any], let index = Int(part), array.indices.contains(index) {
                value = array[index]
            } else {
                return .json(["error": "Not found"]).with(status: 404)
            }
        }
        if query["format"] == "text" {
            if let text = value as? String { return .text(200, text) }
            if let number = value as? NSNumber { return .text(200, number.stringValue) }
            return .json(["error": "Bad request. format=text is for leaf values"]).with(status: 400)
        }
        return .json(value)
    }

    /// Azure's instance document, the parts scripts and agents read. No `network` section: cloud-init would
    /// match its interfaces by MAC address and rename them, and falls back to DHCP on the first NIC without it.
    var instanceDocument: [String: Any] {
        let sortedTags = metadata.tags.sorted { $0.key < $1.key }
        return [
            "compute": [
                "azEnvironment": "AzurePublicCloud",
                "location": metadata.location,
                "name": vmName,
                "osType": "Linux",
                "vmSize": metadata.vmSize,
                "vmId": vmID,
                "subscriptionId": metadata.subscriptionId,
                "resourceGroupName": metadata.resourceGroupName,
                "resourceId": "/subscriptions/\(metadata.subscriptionId)/resourceGroups/\(metadata.resourceGroupName)/providers/Microsoft.Compute/virtualMachines/\(vmName)",
                "tags": sortedTags.map { "\($0.key):\($0.value)" }.joined(separator: ";"),
                "tagsList": sortedTags.map { ["name": $0.key, "value": $0.value] },
                "platformFaultDomain": "0",
                "platformUpdateDomain": "0",
                "provider": "Microsoft.Compute",
                "publisher": metadata.publisher,
                "offer": metadata.offer,
                "sku": metadata.sku,
                "version": metadata.version,
                "osProfile": ["adminUsername": username, "computerName": vmName, "disablePasswordAuthentication": "true"],
                "publicKeys": [["keyData": publicKey, "path": "/home/\(username)/.ssh/authorized_keys"]],
                "userData": "",
            ] as [String: Any],
        ]
    }

    static let versions = """
    <?xml version="1.0" encoding="utf-8"?>
    <Versions><Preferred><Version>2012-11-30</Version></Preferred><Supported><Version>2012-11-30</Version></Supported></Versions>

    """

    var instanceID: String { "\(vmID)._\(vmName)" }

    /// The goal state: one role instance, a constant incarnation, the two config documents the Linux agent
    /// requires, no certificates and no extensions.
    var goalState: String {
        let config = "http://\(Self.wireServer):80/machine/\(vmID)?comp=config&amp;incarnation=1&amp;type="
        return """
        <?xml version="1.0" encoding="utf-8"?>
        <GoalState xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="goalstate10.xsd">
          <Version>2012-11-30</Version>
          <Incarnation>1</Incarnation>
          <Machine><ExpectedState>Started</ExpectedState><StopRolesDeadlineHint>300000</StopRolesDeadlineHint><ExpectHealthReport>FALSE</ExpectHealthReport></Machine>
          <Container>
            <ContainerId>\(vmID)</ContainerId>
            <RoleInstanceList>
              <RoleInstance>
                <InstanceId>\(XMLText.escape(instanceID))</InstanceId>
                <State>Started</State>
                <Configuration>
                  <HostingEnvironmentConfig>\(config)hostingEnvironmentConfig</HostingEnvironmentConfig>
                  <SharedConfig>\(config)sharedConfig</SharedConfig>
                  <ConfigName>\(XMLText.escape(instanceID)).1.xml</ConfigName>
                </Configuration>
              </RoleInstance>
            </RoleInstanceList>
          </Container>
        </GoalState>

        """
    }

    var hostingEnvironmentConfig: String {
        let name = XMLText.escape(vmName)
        return """
        <?xml version="1.0" encoding="utf-8"?>
        <HostingEnvironmentConfig version="1.0.0.0" goalStateIncarnation="1">
          <StoredCertificates/>
          <Deployment name="\(vmID)" guid="{\(vmID)}" incarnation="0"/>
          <Incarnation number="1" instance="\(name)" guid="{\(vmID)}"/>
          <Role guid="{\(vmID)}" name="\(name)"/>
        </HostingEnvironmentConfig>

        """
    }

    var sharedConfig: String {
        let name = XMLText.escape(vmName)
        return """
        <?xml version="1.0" encoding="utf-8"?>
        <SharedConfig version="1.0.0.0" goalStateIncarnation="1">
          <Deployment name="\(vmID)" guid="{\(vmID)}" incarnation="0"/>
          <Incarnation number="1" instance="\(name)" guid="{\(vmID)}"/>
          <Role guid="{\(vmID)}" name="\(name)" settleTimeSeconds="0"/>
        </SharedConfig>

        """
    }

    /// `<State>Ready</State>`, or `NotReady` with the agent's `<Description>` of what failed.
    static func parseHealth(_ body: [UInt8]) -> HealthReport {
        let text = String(decoding: body, as: UTF8.self)
        func element(_ name: String) -> String? {
            guard let start = text.range(of: "<\(name)>"), let end = text.range(of: "</\(name)>", range: start.upperBound..<text.endIndex) else { return nil }
            return String(text[start.upperBound..<end.lowerBound]).trimmingCharacters(in: .whitespacesAndNewlines)
        }
        return HealthReport(state: element("State") ?? "unknown", description: element("Description"), subStatus: element("SubStatus"))
    }
}

extension AzureFabric.Response {
    func with(status: Int) -> AzureFabric.Response {
        var copy = self
        copy.status = status
        return copy
    }
}

private final class WeakFabric: @unchecked Sendable {
    weak var fabric: AzureFabric?
    init(_ fabric: AzureFabric) { self.fabric = fabric }
}

private final class FabricHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let fabric: WeakFabric
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []

    init(fabric: WeakFabric) { self.fabric = fabric }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            body = []
        case .body(var buffer):
            if body.count < 1 << 20 { body += buffer.readBytes(length: buffer.readableBytes) ?? [] }
        case .end:
            guard let head else { return }
            let response = fabric.fabric?.respond(method: head.method.rawValue, uri: head.uri, headers: head.headers, body: body)
                ?? AzureFabric.Response.text(503, "")
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: response.contentType)
            headers.add(name: "Content-Length", value: String(response.body.count))
            headers.add(name: "Connection", value: "close")
            let channel = context.channel
            channel.write(HTTPServerResponsePart.head(HTTPResponseHead(version: head.version, status: HTTPResponseStatus(statusCode: response.status), headers: headers)), promise: nil)
            channel.write(HTTPServerResponsePart.body(.byteBuffer(channel.allocator.buffer(bytes: response.body))), promise: nil)
            channel.writeAndFlush(HTTPServerResponsePart.end(nil)).whenComplete { _ in channel.close(promise: nil) }
        }
    }
}
