import Crypto
import Foundation
import KilnGuest
import KilnSupport
import NIOCore
import NIOPosix
import NIOSSH

/// An SSH connection to a guest, on swift-nio-ssh.
public final class SSHSession: GuestSession, @unchecked Sendable {
    public let endpoint: SSHEndpoint
    /// The TCP connection with the SSH handler; `SSHPortForwarder` opens its channels on it.
    let channel: Channel
    private let lastActivity = Locked<ContinuousClock.Instant>(.now)
    private var keepalive: Task<Void, Never>?

    private init(endpoint: SSHEndpoint, channel: Channel) {
        self.endpoint = endpoint
        self.channel = channel
    }

    /// Connects and authenticates once. Fails fast (refused, reset, rejected key) so that a caller can retry.
    /// With `bannerTimeout`, an attempt whose server has not sent its SSH identification by
    /// then is given up (behind QEMU's user-mode network that means the guest has not answered at all);
    /// `onBanner` is called when it arrives.
    public static func connect(_ endpoint: SSHEndpoint, timeout: Duration = .seconds(30), bannerTimeout: Duration? = nil,
                               onBanner: (@Sendable () -> Void)? = nil) async throws(KilnError) -> SSHSession {
        let group = MultiThreadedEventLoopGroup.singleton
        let ready = group.next().makePromise(of: Void.self)
        let userAuth = KeyAuthDelegate(username: endpoint.username, key: NIOSSHPrivateKey(ed25519Key: endpoint.keyPair.privateKey))
        let bannerSeen = Locked(false)
        let serverAuth = PinningHostKeyDelegate(pin: endpoint.hostKeyPin)
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(.seconds(Int64(min(timeout.components.seconds, 30))))
            .channelOption(ChannelOptions.socket(SocketOptionLevel(IPPROTO_TCP), TCP_NODELAY), value: 1)
            .channelOption(ChannelOptions.socket(SocketOptionLevel(SOL_SOCKET), SO_KEEPALIVE), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(BannerWatch(onFirstBytes: {
                        bannerSeen.withLock { $0 = true }
                        onBanner?()
                    }))
                    let ssh = NIOSSHHandler(role: .client(.init(userAuthDelegate: userAuth, serverAuthDelegate: serverAuth)),
                                            allocator: channel.allocator, inboundChildChannelInitializer: nil)
                    try channel.pipeline.syncOperations.addHandler(ssh)
                    try channel.pipeline.syncOperations.addHandler(ReadinessHandler(ready: ready))
                }
            }
        let channel: Channel
        do {
            channel = try await bootstrap.connect(host: endpoint.host, port: endpoint.port).get()
        } catch {
            ready.fail(error)
            throw KilnError(.io, "cannot connect to \(endpoint.host):\(endpoint.port): \(error)")
        }
        let timeoutTask = Task {
            if let bannerTimeout, bannerTimeout < timeout {
                try? await Task.sleep(for: bannerTimeout)
                if !bannerSeen.current {
                    ready.fail(KilnError(.timeout, "no SSH identification from \(endpoint.host):\(endpoint.port) within \(DurationText.format(bannerTimeout))"))
                    return
                }
                try? await Task.sleep(for: timeout - bannerTimeout)
            } else {
                try? await Task.sleep(for: timeout)
            }
            ready.fail(KilnError(.timeout, "SSH handshake with \(endpoint.host):\(endpoint.port) did not finish within \(DurationText.format(timeout))"))
        }
        defer { timeoutTask.cancel() }
        do {
            // Cancellable: waitForConnection cancels the attempts that lost, and must not wait out their timeouts.
            try await withTaskCancellationHandler {
                try await ready.futureResult.get()
            } onCancel: {
                ready.fail(KilnError(.cancelled, "SSH connection attempt cancelled"))
            }
        } catch {
            try? await channel.close()
            if let kiln = error as? KilnError { throw kiln }
            throw KilnError(.io, "SSH handshake with \(endpoint.host):\(endpoint.port) failed: \(error)")
        }
        if let key = serverAuth.presented.current, let problem = endpoint.hostKeyPin.check(key) {
            try? await channel.close()
            throw KilnError(.hostKeyMismatch, "SSH host key mismatch: \(problem)")
        }
        let session = SSHSession(endpoint: endpoint, channel: channel)
        session.startKeepalive()
        return session
    }

    /// Retries `connect` until it succeeds or `timeout` passes (the AIB SSH timeout is 20 minutes), tolerating
    /// refused and reset connections while the guest boots. `progress` is told about failed attempts; `abort` is
    /// asked between attempts whether waiting still makes sense (the VM may have died).
    ///
    /// QEMU's user-mode network accepts a TCP connection before the guest can answer it, so an attempt made while
    /// the guest's network is still down hangs instead of being refused. Attempts therefore overlap: a new one
    /// starts every `pollInterval`, and one that has heard no SSH identification within `bannerTimeout` is
    /// dropped, so the wait after sshd starts is about one poll interval. While an attempt that reached sshd is
    /// logging in, no new one starts: every connection costs the guest an sshd process (a re-exec, slow under
    /// TCG), and a burst of them, as queued SYNs reach a freshly started sshd together, was seen to delay the
    /// first login by 10–20 s. For the same reason an attempt that reached sshd is given `attemptTimeout` (60 s) to
    /// log in: on a loaded host a TCG guest's handshake was seen to take over 15 s, and abandoning it for a new one
    /// only spent the guest's CPU on another sshd (one guest's sshd used 3.5 CPU-minutes that way before a login).
    public static func waitForConnection(_ endpoint: SSHEndpoint, timeout: Duration, pollInterval: Duration = .milliseconds(500),
                                         bannerTimeout: Duration = .seconds(5), attemptTimeout: Duration = .seconds(60),
                                         progress: @escaping @Sendable (Int, Duration, KilnError) -> Void = { _, _, _ in },
                                         abort: @escaping @Sendable () async -> KilnError? = { nil }) async throws(KilnError) -> SSHSession {
        enum Attempt: Sendable {
            case connected(SSHSession)
            case failed(KilnError)
            case tick
        }
        let clock = ContinuousClock()
        let start = clock.now
        let maxInFlight = Int((bannerTimeout / pollInterval).rounded(.up)) + 2
        let handshaking = Locked(0)
        let outcome: Result<SSHSession, KilnError> = await withTaskGroup(of: Attempt.self) { group in
            var attempts = 1
            var inFlight = 1
            var lastError = KilnError(.io, "no attempt finished yet")
            let attempt: @Sendable () async -> Attempt = {
                let reachedServer = Locked(false)
                defer { if reachedServer.current { handshaking.withLock { $0 -= 1 } } }
                do throws(KilnError) {
                    return .connected(try await connect(endpoint, timeout: attemptTimeout, bannerTimeout: bannerTimeout, onBanner: {
                        reachedServer.withLock { $0 = true }
                        handshaking.withLock { $0 += 1 }
                    }))
                } catch {
                    return .failed(error)
                }
            }
            /// Closes sessions that logged in after the winner.
            func finish(_ result: Result<SSHSession, KilnError>) async -> Result<SSHSession, KilnError> {
                group.cancelAll()
                while let late = await group.next() {
                    if case .connected(let extra) = late { await extra.close() }
                }
                return result
            }
            group.addTask(operation: attempt)
            group.addTask { try? await Task.sleep(for: pollInterval); return .tick }
            while let next = await group.next() {
                switch next {
                case .connected(let session):
                    return await finish(.success(session))
                case .failed(let error):
                    inFlight -= 1
                    lastError = error
                    // A different host key is not a guest still booting: stop at once.
                    if error.code == .hostKeyMismatch { return await finish(.failure(error)) }
                case .tick:
                    if Task.isCancelled { return await finish(.failure(KilnError(.cancelled, "cancelled while waiting for SSH"))) }
                    if let fatal = await abort() { return await finish(.failure(fatal)) }
                    let elapsed = clock.now - start
                    if elapsed >= timeout {
                        return await finish(.failure(KilnError(.timeout, "Timeout waiting for SSH: no SSH login on \(endpoint.host):\(endpoint.port) within \(DurationText.format(timeout)) (\(attempts) attempts; last: \(lastError.message))")))
                    }
                    if attempts > 1 { progress(attempts, elapsed, lastError) }
                    if inFlight < maxInFlight && handshaking.current == 0 {
                        attempts += 1
                        inFlight += 1
                        group.addTask(operation: attempt)
                    }
                    group.addTask { try? await Task.sleep(for: pollInterval); return .tick }
                }
            }
            return .failure(lastError)
        }
        return try outcome.get()
    }

    private func startKeepalive() {
        let channel = self.channel
        keepalive = Task { [weak self] in
            // OpenSSH-style liveness: when nothing has arrived for a while, open and close a session channel; a
            // guest that rebooted or hung cannot answer, and the connection is closed so running commands end.
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(10))
                guard let self, channel.isActive else { return }
                guard ContinuousClock.now - self.lastActivity.current > .seconds(20) else { continue }
                let probe = channel.eventLoop.makePromise(of: Channel.self)
                channel.pipeline.handler(type: NIOSSHHandler.self).whenSuccess { handler in
                    handler.createChannel(probe, channelType: .session) { child, _ in child.eventLoop.makeSucceededVoidFuture() }
                }
                let answered = await withTaskGroup(of: Bool.self) { group in
                    group.addTask {
                        guard let opened = try? await probe.futureResult.get() else { return false }
                        try? await opened.close()
                        return true
                    }
                    group.addTask { try? await Task.sleep(for: .seconds(45)); return false }
                    let first = await group.next() ?? false
                    group.cancelAll()
                    return first
                }
                if answered {
                    self.touch()
                } else {
                    probe.fail(KilnError(.timeout, "keepalive"))
                    try? await channel.close()
                    return
                }
            }
        }
    }

    func touch() { lastActivity.withLock { $0 = .now } }

    public var isConnected: Bool { channel.isActive }

    public func exec(_ command: String, stdin: [UInt8]?, output: @escaping @Sendable (OutputChunk) -> Void) async throws(KilnError) -> ExecResult {
        let child = try await openExecChannel(command, output: output)
        if let stdin {
            try await writeStdin(child.channel, chunks: [stdin])
        }
        return await waitForOutcome(child)
    }

    public func upload(localPath: String, remotePath: String) async throws(KilnError) {
        guard let handle = FileHandle(forReadingAtPath: localPath) else {
            throw KilnError(.io, "cannot read \(localPath) to upload it")
        }
        defer { try? handle.close() }
        let errors = OutputCollector()
        let quoted = ShellQuote.quote(remotePath)
        let child = try await openExecChannel("cat > \(quoted)", output: { errors.append($0) })
        do {
            while true {
                let data = try handle.read(upToCount: 256 * 1024) ?? Data()
                if data.isEmpty { break }
                try await write(child.channel, Array(data))
            }
            try await child.channel.close(mode: .output).get()
        } catch {
            try? await child.channel.close()
            _ = await waitForOutcome(child)
            throw KilnError(.io, "upload of \(localPath) to \(remotePath) failed: \(error)")
        }
        let result = await waitForOutcome(child)
        guard result.succeeded else {
            throw KilnError(.external, "upload of \(localPath) to \(remotePath) failed: \(result): \(errors.stderrText.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
    }

    private struct ExecChannel {
        var channel: Channel
        var outcome: EventLoopPromise<ExecResult>
    }

    private func openExecChannel(_ command: String, output: @escaping @Sendable (OutputChunk) -> Void) async throws(KilnError) -> ExecChannel {
        guard channel.isActive else {
            throw KilnError(.io, "the SSH connection to \(endpoint.host):\(endpoint.port) is closed")
        }
        let eventLoop = channel.eventLoop
        let outcome = eventLoop.makePromise(of: ExecResult.self)
        let started = eventLoop.makePromise(of: Void.self)
        let childPromise = eventLoop.makePromise(of: Channel.self)
        let touch: @Sendable () -> Void = { [weak self] in self?.touch() }
        do {
            let handlerLookup = channel.pipeline.handler(type: NIOSSHHandler.self)
            handlerLookup.whenSuccess { handler in
                handler.createChannel(childPromise, channelType: .session) { child, _ in
                    child.eventLoop.makeCompletedFuture {
                        try child.pipeline.syncOperations.addHandler(
                            ExecChannelHandler(command: command, output: output, activity: touch, started: started, outcome: outcome))
                    }
                }
            }
            handlerLookup.whenFailure { childPromise.fail($0) }
            let child = try await childPromise.futureResult.get()
            try await started.futureResult.get()
            return ExecChannel(channel: child, outcome: outcome)
        } catch {
            childPromise.fail(error)
            started.fail(error)
            outcome.fail(error)
            if !channel.isActive {
                throw KilnError(.io, "the SSH connection closed before `\(command)` started")
            }
            throw KilnError(.external, "cannot start `\(command)` over SSH: \(error)")
        }
    }

    private func write(_ child: Channel, _ bytes: [UInt8]) async throws {
        var buffer = child.allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        try await child.writeAndFlush(SSHChannelData(type: .channel, data: .byteBuffer(buffer))).get()
        touch()
    }

    private func writeStdin(_ child: Channel, chunks: [[UInt8]]) async throws(KilnError) {
        do {
            for chunk in chunks where !chunk.isEmpty { try await write(child, chunk) }
            try await child.close(mode: .output).get()
        } catch {
            throw KilnError(.io, "cannot write standard input over SSH: \(error)")
        }
    }

    /// Waits for the command to end. Cancelling the task closes the channel and returns at once: the guest's sshd
    /// confirms the close only when the command exits, which may be never (`sleep 600`).
    private func waitForOutcome(_ child: ExecChannel) async -> ExecResult {
        let channel = child.channel
        let outcome = child.outcome
        return await withTaskCancellationHandler {
            do {
                return try await outcome.futureResult.get()
            } catch {
                return ExecResult(.disconnected("\(error)"))
            }
        } onCancel: {
            channel.close(promise: nil)
            // A promise completes once; the handler's own completion later is ignored.
            outcome.succeed(ExecResult(.disconnected("cancelled")))
        }
    }

    public func close() async {
        keepalive?.cancel()
        try? await channel.close()
    }
}
