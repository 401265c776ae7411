import Foundation
import KilnSupport
import NIOCore
import NIOPosix
import NIOSSH

/// A local listener on 127.0.0.1 whose connections each go through a new SSH `direct-tcpip` channel of an existing
/// SSH connection to a TCP port as the SSH server's host sees it (by default its own 127.0.0.1), like `ssh -L`.
/// Kiln's SSH and WinRM clients reach a guest whose port is forwarded on a remote libvirt host's loopback through
/// it unchanged, and that port is never opened to the network.
///
/// Everything runs on the SSH connection's event loop: the listener, the accepted connections and their channels,
/// so the two halves of a forwarded connection hand bytes to each other without a hop. Reading from one half waits
/// while the other cannot take more (SSH's window or the socket's buffer), and an end of input on one side closes
/// the other side's output, so a client's half-close reaches the target and back.
public final class SSHPortForwarder: Sendable {
    /// The port on 127.0.0.1 to connect to.
    public let localPort: Int
    public let targetHost: String
    public let targetPort: Int
    private let listener: Channel
    private let connections: Locked<[ObjectIdentifier: Channel]>

    private init(listener: Channel, localPort: Int, targetHost: String, targetPort: Int, connections: Locked<[ObjectIdentifier: Channel]>) {
        self.listener = listener
        self.localPort = localPort
        self.targetHost = targetHost
        self.targetPort = targetPort
        self.connections = connections
    }

    /// Listens on 127.0.0.1 (`localPort` 0: a free port) and forwards each connection through `session` to
    /// `targetHost:targetPort` on the SSH server's side. A connection whose channel the server refuses (nothing
    /// listens there, or the server forbids forwarding) is closed at once, and `onFailure` says why.
    public static func start(through session: SSHSession, targetHost: String = "127.0.0.1", targetPort: Int, localPort: Int = 0,
                             onFailure: @escaping @Sendable (KilnError) -> Void = { _ in }) async throws(KilnError) -> SSHPortForwarder {
        let ssh = session.channel
        guard ssh.isActive else {
            throw KilnError(.io, "the SSH connection to \(session.endpoint.host):\(session.endpoint.port) is closed")
        }
        let route = "\(targetHost):\(targetPort) through SSH to \(session.endpoint.host):\(session.endpoint.port)"
        let connections = Locked<[ObjectIdentifier: Channel]>([:])
        let bootstrap = ServerBootstrap(group: ssh.eventLoop)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .childChannelOption(ChannelOptions.socket(SocketOptionLevel(IPPROTO_TCP), TCP_NODELAY), value: 1)
            .childChannelInitializer { local in
                let id = ObjectIdentifier(local)
                connections.withLock { $0[id] = local }
                local.closeFuture.whenComplete { _ in connections.withLock { $0[id] = nil } }
                return local.eventLoop.makeCompletedFuture {
                    try forward(local, through: ssh, targetHost: targetHost, targetPort: targetPort, route: route, onFailure: onFailure)
                }
            }
        let listener: Channel
        do {
            listener = try await bootstrap.bind(host: "127.0.0.1", port: localPort).get()
        } catch {
            throw KilnError(.portUnavailable, "cannot listen on 127.0.0.1:\(localPort) to forward \(route): \(error)")
        }
        guard let port = listener.localAddress?.port else {
            try? await listener.close()
            throw KilnError(.internalError, "the forwarding listener for \(route) has no port")
        }
        // The SSH connection gone, nothing can be forwarded any more.
        ssh.closeFuture.whenComplete { _ in listener.close(promise: nil) }
        return SSHPortForwarder(listener: listener, localPort: port, targetHost: targetHost, targetPort: targetPort, connections: connections)
    }

    /// Runs on the event loop, as `local` is set up: opens its channel and joins the two. Until the channel is
    /// open, `local` is not read.
    private static func forward(_ local: Channel, through ssh: Channel, targetHost: String, targetPort: Int, route: String,
                                onFailure: @escaping @Sendable (KilnError) -> Void) throws {
        let (localGlue, channelGlue) = ForwardingGlue.pair()
        try local.pipeline.syncOperations.addHandler(localGlue)
        let handler = try ssh.pipeline.syncOperations.handler(type: NIOSSHHandler.self)
        let originator = try local.remoteAddress ?? SocketAddress(ipAddress: "127.0.0.1", port: 0)
        let opened = local.eventLoop.makePromise(of: Channel.self)
        let glue = NIOLoopBound(channelGlue, eventLoop: local.eventLoop)
        handler.createChannel(opened, channelType: .directTCPIP(.init(targetHost: targetHost, targetPort: targetPort, originatorAddress: originator))) { child, _ in
            child.setOption(ChannelOptions.allowRemoteHalfClosure, value: true).flatMapThrowing {
                try child.pipeline.syncOperations.addHandler(SSHChannelDataUnwrapper())
                try child.pipeline.syncOperations.addHandler(glue.value)
            }
        }
        opened.futureResult.whenFailure { error in
            onFailure(KilnError(.external, "the SSH server did not open a channel to \(route): \(error)"))
            local.close(promise: nil)
        }
    }

    /// Stops listening and closes the connections being forwarded. Idempotent; the SSH connection stays open.
    public func close() async {
        try? await listener.close()
        for connection in connections.withLock({ Array($0.values) }) {
            try? await connection.close()
        }
    }
}

extension SSHSession {
    /// Forwards 127.0.0.1:`localPort` (0: a free port) to `targetHost:targetPort` on this connection's server side.
    public func forwardLocalPort(to targetPort: Int, targetHost: String = "127.0.0.1", localPort: Int = 0,
                                 onFailure: @escaping @Sendable (KilnError) -> Void = { _ in }) async throws(KilnError) -> SSHPortForwarder {
        try await SSHPortForwarder.start(through: self, targetHost: targetHost, targetPort: targetPort, localPort: localPort, onFailure: onFailure)
    }
}

/// A `direct-tcpip` channel's bytes as plain buffers, and plain buffers written as channel data.
final class SSHChannelDataUnwrapper: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = SSHChannelData
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = SSHChannelData

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // A forwarded TCP stream has no standard error; anything but channel data is dropped.
        let message = unwrapInboundIn(data)
        guard case .channel = message.type, case .byteBuffer(let buffer) = message.data else { return }
        context.fireChannelRead(wrapInboundOut(buffer))
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        context.write(wrapOutboundOut(SSHChannelData(type: .channel, data: .byteBuffer(unwrapOutboundIn(data)))), promise: promise)
    }
}

/// One half of a forwarded connection: what it reads, its partner writes. It reads only while the partner can
/// write (back-pressure end to end). Its end of input becomes the partner's end of output, and its close the
/// partner's close, each only after the partner has written what it was given: a socket drops unwritten data when
/// it closes, so an end of input that follows a burst of data must not cut the burst off. Both halves live on one
/// event loop.
final class ForwardingGlue: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// The two kinds of channel a forwarded connection joins: they finish their output differently.
    enum Side {
        /// An accepted TCP connection: writes complete in order, so an empty write's completion means all
        /// earlier ones are written.
        case socket
        /// An SSH channel: closing its output queues SSH's end-of-file message behind the data not yet sent.
        case sshChannel
    }

    private let side: Side
    private var partner: ForwardingGlue?
    private var context: ChannelHandlerContext?
    /// A read asked for while the partner could not take more (or was not there yet).
    private var readWaiting = false
    /// The partner ended before this half was set up.
    private var closeWhenAdded = false

    private init(side: Side) { self.side = side }

    /// The socket's half and the SSH channel's half.
    static func pair() -> (socket: ForwardingGlue, sshChannel: ForwardingGlue) {
        let socket = ForwardingGlue(side: .socket), channel = ForwardingGlue(side: .sshChannel)
        socket.partner = channel
        channel.partner = socket
        return (socket, channel)
    }

    private var canTakeMore: Bool { context?.channel.isWritable ?? false }

    private func resumeReading() {
        guard readWaiting, let context else { return }
        readWaiting = false
        context.read()
    }

    /// Runs `then` once what was written before is on its way.
    private func afterPendingWrites(_ context: ChannelHandlerContext, then: @escaping (ChannelHandlerContext) -> Void) {
        let done = context.eventLoop.makePromise(of: Void.self)
        switch side {
        case .socket: context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: done)
        case .sshChannel: context.close(mode: .output, promise: done)
        }
        done.futureResult.assumeIsolated().whenComplete { _ in then(context) }
    }

    /// The partner read its end of input.
    private func partnerEndedInput() {
        guard let context else { return }
        switch side {
        case .socket: afterPendingWrites(context) { $0.close(mode: .output, promise: nil) }
        case .sshChannel: context.close(mode: .output, promise: nil)
        }
    }

    /// The partner's channel closed.
    private func partnerClosed() {
        guard let context else {
            closeWhenAdded = true
            return
        }
        afterPendingWrites(context) { $0.close(promise: nil) }
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if closeWhenAdded {
            context.close(promise: nil)
            return
        }
        if context.channel.isWritable { partner?.resumeReading() }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        partner = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        partner?.context?.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        partner?.context?.flush()
        context.fireChannelReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event { partner?.partnerEndedInput() }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        partner?.partnerClosed()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { partner?.resumeReading() }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if partner?.canTakeMore == true {
            context.read()
        } else {
            readWaiting = true
        }
    }
}
