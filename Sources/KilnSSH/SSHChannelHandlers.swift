import Foundation
import KilnGuest
import KilnSupport
import NIOCore
import NIOSSH

/// Offers the build's private key once.
final class KeyAuthDelegate: NIOSSHClientUserAuthenticationDelegate, @unchecked Sendable {
    private let username: String
    private let key: NIOSSHPrivateKey
    private var offered = false

    init(username: String, key: NIOSSHPrivateKey) {
        self.username = username
        self.key = key
    }

    func nextAuthenticationType(availableMethods: NIOSSHAvailableUserAuthenticationMethods,
                                nextChallengePromise: EventLoopPromise<NIOSSHUserAuthenticationOffer?>) {
        guard !offered, availableMethods.contains(.publicKey) else {
            nextChallengePromise.fail(KilnError(.authenticationRejected, "the guest rejected the build key for user \(username)"))
            return
        }
        offered = true
        nextChallengePromise.succeed(NIOSSHUserAuthenticationOffer(username: username, serviceName: "", offer: .privateKey(.init(privateKey: key))))
    }
}

final class PinningHostKeyDelegate: NIOSSHClientServerAuthenticationDelegate, @unchecked Sendable {
    private let pin: HostKeyPin
    /// The key this connection's server presented, pinned by `SSHSession.connect` once the login succeeds.
    let presented = Locked<NIOSSHPublicKey?>(nil)
    init(pin: HostKeyPin) { self.pin = pin }

    func validateHostKey(hostKey: NIOSSHPublicKey, validationCompletePromise: EventLoopPromise<Void>) {
        presented.withLock { $0 = hostKey }
        if let problem = pin.admits(hostKey) {
            validationCompletePromise.fail(KilnError(.hostKeyMismatch, "SSH host key mismatch: \(problem)"))
        } else {
            validationCompletePromise.succeed(())
        }
    }
}

/// Reports the first bytes from the server (its SSH identification line) and passes everything on.
final class BannerWatch: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    private var onFirstBytes: (@Sendable () -> Void)?

    init(onFirstBytes: @escaping @Sendable () -> Void) { self.onFirstBytes = onFirstBytes }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if let callback = onFirstBytes {
            onFirstBytes = nil
            callback()
        }
        context.fireChannelRead(data)
    }
}

/// Succeeds `ready` once user authentication succeeded; fails it on any error or close before that.
final class ReadinessHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = Any
    private let ready: EventLoopPromise<Void>
    private var done = false

    init(ready: EventLoopPromise<Void>) { self.ready = ready }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is UserAuthSuccessEvent, !done {
            done = true
            ready.succeed(())
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if !done {
            done = true
            ready.fail(error)
        }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !done {
            done = true
            ready.fail(KilnError(.io, "the connection closed during the SSH handshake"))
        }
        context.fireChannelInactive()
    }
}

/// One exec request on a session channel: streams output, records exit status or signal, completes on close.
final class ExecChannelHandler: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = SSHChannelData
    typealias OutboundIn = SSHChannelData
    typealias OutboundOut = SSHChannelData

    private let command: String
    private let output: @Sendable (OutputChunk) -> Void
    private let activity: @Sendable () -> Void
    private let started: EventLoopPromise<Void>
    private let outcome: EventLoopPromise<ExecResult>
    private var exitStatus: Int32?
    private var exitSignal: String?
    private var failure: String?

    init(command: String, output: @escaping @Sendable (OutputChunk) -> Void, activity: @escaping @Sendable () -> Void,
         started: EventLoopPromise<Void>, outcome: EventLoopPromise<ExecResult>) {
        self.command = command
        self.output = output
        self.activity = activity
        self.started = started
        self.outcome = outcome
    }

    func handlerAdded(context: ChannelHandlerContext) {
        context.channel.setOption(ChannelOptions.allowRemoteHalfClosure, value: true).whenFailure { [started] error in
            started.fail(error)
        }
    }

    func channelActive(context: ChannelHandlerContext) {
        let request = SSHChannelRequestEvent.ExecRequest(command: command, wantReply: true)
        context.triggerUserOutboundEvent(request).whenFailure { [started] error in
            started.fail(error)
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let message = unwrapInboundIn(data)
        guard case .byteBuffer(let buffer) = message.data else { return }
        activity()
        let bytes = Array(buffer.readableBytesView)
        switch message.type {
        case .channel: output(OutputChunk(stream: .stdout, bytes: bytes))
        case .stdErr: output(OutputChunk(stream: .stderr, bytes: bytes))
        default: break
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        activity()
        switch event {
        case is ChannelSuccessEvent:
            started.succeed(())
        case is ChannelFailureEvent:
            started.fail(KilnError(.external, "the guest's SSH server refused to run `\(command)`"))
            context.close(promise: nil)
        case let status as SSHChannelRequestEvent.ExitStatus:
            exitStatus = Int32(truncatingIfNeeded: status.exitStatus)
        case let signal as SSHChannelRequestEvent.ExitSignal:
            exitSignal = signal.signalName
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        failure = "\(error)"
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        started.fail(KilnError(.io, "the SSH channel closed before `\(command)` started"))
        if let exitSignal {
            outcome.succeed(ExecResult(.signaled(exitSignal)))
        } else if let exitStatus {
            outcome.succeed(ExecResult(.exited(exitStatus)))
        } else {
            outcome.succeed(ExecResult(.disconnected(failure ?? "the channel closed without an exit status")))
        }
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        outcome.succeed(ExecResult(.disconnected(failure ?? "the channel was removed")))
    }
}
