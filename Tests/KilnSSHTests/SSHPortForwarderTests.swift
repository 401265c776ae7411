import Foundation
import KilnGuest
import KilnSupport
import NIOCore
import NIOPosix
import Testing
@testable import KilnSSH

/// OpenSSH's sshd on 127.0.0.1 and a free port, key-only, configured and keyed from a temporary directory.
/// It runs as a daemon (sshd forks, its parent exits) and is stopped by its pid file: sshd closes every inherited
/// descriptor at start, which Foundation's Process takes for the child's exit, and it then blocks in waitpid.
final class LocalSSHServer: Sendable {
    let directory: String
    let endpoint: SSHEndpoint

    private init(directory: String, endpoint: SSHEndpoint) {
        self.directory = directory
        self.endpoint = endpoint
    }

    static func start() async throws -> LocalSSHServer {
        let sshd = try #require(Subprocess.find("sshd"), "OpenSSH's sshd is missing: scripts/install-deps installs openssh-server")
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-sshd-\(UUID().uuidString.prefix(8))").path
        try PrivateDirectory.make(directory)
        try await Subprocess.check("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", directory + "/host_key"])
        let client = SSHKeyPair()
        try client.openSSHPublicKey(comment: "kiln-test").write(toFile: directory + "/authorized_keys", atomically: true, encoding: .utf8)
        let port = try await freePort()
        let user = getuid() == 0 ? "root" : (getpwuid(getuid()).map { String(cString: $0.pointee.pw_name) } ?? "nobody")
        try """
        ListenAddress 127.0.0.1:\(port)
        HostKey \(directory)/host_key
        PidFile \(directory)/sshd.pid
        AuthorizedKeysFile \(directory)/authorized_keys
        AuthenticationMethods publickey
        PermitRootLogin prohibit-password
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        UsePAM no
        StrictModes no
        AllowTcpForwarding yes
        """.write(toFile: directory + "/sshd_config", atomically: true, encoding: .utf8)
        // As root, sshd insists on its privilege separation directory (Debian's ssh.service makes it).
        if getuid() == 0 { try FileManager.default.createDirectory(atPath: "/run/sshd", withIntermediateDirectories: true) }
        try await Subprocess.check(sshd, ["-f", directory + "/sshd_config", "-E", directory + "/sshd.log"], timeout: .seconds(10))
        let hostKey = try String(contentsOfFile: directory + "/host_key.pub", encoding: .utf8).split(separator: " ").prefix(2).joined(separator: " ")
        let endpoint = SSHEndpoint(host: "127.0.0.1", port: port, username: user, keyPair: client, hostKeyPin: try HostKeyPin(pinned: hostKey))
        return LocalSSHServer(directory: directory, endpoint: endpoint)
    }

    /// A session as soon as sshd answers.
    func connect() async throws -> SSHSession {
        try await SSHSession.waitForConnection(endpoint, timeout: .seconds(10), pollInterval: .milliseconds(50))
    }

    /// Stops the listening sshd (sessions end with their connections) and removes the directory.
    func stop() async {
        // sshd writes its pid file once it listens; `start` returned after its parent exited.
        if let text = try? String(contentsOfFile: directory + "/sshd.pid", encoding: .utf8), let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
            kill(pid, SIGTERM)
            for _ in 0..<100 where Self.isRunning(pid) { try? await Task.sleep(for: .milliseconds(20)) }
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// The daemon's parent is init, which reaps it in its own time: an exited one that is not reaped yet (state Z)
    /// counts as stopped.
    static func isRunning(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let end = stat.lastIndex(of: ")") else { return false }
        return !stat[end...].hasPrefix(") Z")
    }

    /// A port nothing listens on just now.
    static func freePort() async throws -> Int {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).get()
        let port = try #require(channel.localAddress?.port)
        try await channel.close()
        return port
    }
}

/// A TCP echo server on 127.0.0.1: each connection gets back what it sends; its end of input ends the echo.
final class EchoServer: Sendable {
    let channel: Channel
    var port: Int { channel.localAddress?.port ?? 0 }

    private init(channel: Channel) { self.channel = channel }

    final class Echo: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        func channelRead(context: ChannelHandlerContext, data: NIOAny) { context.write(data, promise: nil) }
        func channelReadComplete(context: ChannelHandlerContext) { context.flush() }
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case ChannelEvent.inputClosed = event { context.close(mode: .output, promise: nil) }
        }
    }

    static func start() async throws -> EchoServer {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { child in child.eventLoop.makeCompletedFuture { try child.pipeline.syncOperations.addHandler(Echo()) } }
            .bind(host: "127.0.0.1", port: 0).get()
        return EchoServer(channel: channel)
    }

    func stop() async { try? await channel.close() }
}

/// A plain blocking TCP client, as an unchanged SSH or WinRM client would be.
enum TCPClient {
    static func connect(port: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw KilnError(.io, "socket: \(errno)") }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            let error = errno
            close(fd)
            throw KilnError(.io, "connect to 127.0.0.1:\(port): \(String(cString: strerror(error)))")
        }
        return fd
    }

    /// Reads until end of input (or an error, or the 10 s receive timeout).
    static func readAll(_ fd: Int32) -> [UInt8] {
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return received }
            received.append(contentsOf: buffer[0..<count])
        }
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, bytes.count - offset) }
            if written < 0 && errno == EINTR { continue }
            guard written > 0 else { return }
            offset += written
        }
    }

    /// Sends `payload`, half-closes, and returns all that came back before the other side's end of input.
    static func roundTrip(port: Int, payload: [UInt8]) async throws -> [UInt8] {
        let fd = try connect(port: port)
        defer { close(fd) }
        let writer = Task.detached {
            writeAll(fd, payload)
            shutdown(fd, Int32(SHUT_WR))
        }
        let received = try await Blocking.run { readAll(fd) }
        await writer.value
        return received
    }
}

@Suite("SSH port forwarding through OpenSSH's sshd")
struct SSHPortForwarderTests {
    /// `count` random bytes (`count` a multiple of 8), made a word at a time: byte by byte is seconds in a debug build.
    static func randomBytes(_ count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        let words = (0..<(count / 8)).map { _ in generator.next() as UInt64 }
        return words.withUnsafeBytes { Array($0) }
    }

    /// An sshd, an echo server and a session, torn down after `body`.
    static func withServers(_ body: (SSHSession, EchoServer) async throws -> Void) async throws {
        let sshd = try await LocalSSHServer.start()
        let echo: EchoServer, session: SSHSession
        do {
            echo = try await EchoServer.start()
            session = try await sshd.connect()
        } catch {
            await sshd.stop()
            throw error
        }
        do {
            try await body(session, echo)
        } catch {
            await session.close()
            await echo.stop()
            await sshd.stop()
            throw error
        }
        await session.close()
        await echo.stop()
        await sshd.stop()
    }

    @Test("connections at once, each through its own direct-tcpip channel: the bytes come back whole, and a client's half-close reaches the target and comes back")
    func echoes() async throws {
        try await Self.withServers { session, echo in
            let forwarder = try await session.forwardLocalPort(to: echo.port)
            #expect(forwarder.localPort > 0 && forwarder.localPort != echo.port)
            let payloads = (0..<3).map { _ in Self.randomBytes(2 << 20) }
            try await withThrowingTaskGroup(of: Bool.self) { group in
                for payload in payloads {
                    group.addTask { try await TCPClient.roundTrip(port: forwarder.localPort, payload: payload) == payload }
                }
                for try await same in group { #expect(same) }
            }
            // One larger stream, timed (each byte crosses the SSH connection twice).
            let big = Self.randomBytes(16 << 20)
            let clock = ContinuousClock()
            var back: [UInt8] = []
            let elapsed = try await clock.measure { back = try await TCPClient.roundTrip(port: forwarder.localPort, payload: big) }
            #expect(back == big)
            print(String(format: "SSH forwarder: 16 MiB echoed in %.2f s, %.1f MiB/s each way (debug build)", elapsed.inSeconds, 16 / elapsed.inSeconds))
            await forwarder.close()
        }
    }

    @Test("a target nobody listens on: sshd refuses the channel, the local connection is closed and onFailure says why")
    func refusedTarget() async throws {
        try await Self.withServers { session, _ in
            let unused = try await LocalSSHServer.freePort()
            let failures = Locked<[KilnError]>([])
            let forwarder = try await session.forwardLocalPort(to: unused) { error in failures.withLock { $0.append(error) } }
            let fd = try TCPClient.connect(port: forwarder.localPort)
            defer { close(fd) }
            let clock = ContinuousClock()
            let start = clock.now
            let received = try await Blocking.run { TCPClient.readAll(fd) }
            #expect(received.isEmpty)
            #expect(clock.now - start < .seconds(5), "closed at once, not by the read timeout")
            #expect(failures.current.count == 1)
            #expect(failures.current.first?.message.contains("did not open a channel to 127.0.0.1:\(unused)") == true, "\(failures.current)")
            // The SSH connection itself is untouched.
            let result = try await session.exec("echo still here", stdin: nil) { _ in }
            #expect(result.succeeded)
            await forwarder.close()
        }
    }

    @Test("close stops listening and ends the connections being forwarded; the SSH connection stays")
    func closing() async throws {
        try await Self.withServers { session, echo in
            let forwarder = try await session.forwardLocalPort(to: echo.port)
            let fd = try TCPClient.connect(port: forwarder.localPort)
            defer { close(fd) }
            TCPClient.writeAll(fd, Array("ping".utf8))
            let reply = try await Blocking.run { () -> [UInt8] in
                var buffer = [UInt8](repeating: 0, count: 4)
                let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, 4) }
                return Array(buffer.prefix(max(count, 0)))
            }
            #expect(reply == Array("ping".utf8))
            await forwarder.close()
            let rest = try await Blocking.run { TCPClient.readAll(fd) }
            #expect(rest.isEmpty, "the open connection ended")
            #expect(throws: KilnError.self) { _ = try TCPClient.connect(port: forwarder.localPort) }
            #expect(session.isConnected)
            await forwarder.close()
        }
    }
}
