import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A TCP server on 127.0.0.1 that answers each request with exactly the bytes a test scripts: a Content-Length that
/// lies, a chunked body that never ends, a trickle, a redirect. NIO's and Python's servers would refuse to send most
/// of these, which is why this one writes raw bytes on plain sockets. One thread per connection; `stop()` closes the
/// listener and every open connection, so a handler blocked in `send` returns.
public final class ScriptedHTTPServer: @unchecked Sendable {
    public struct Request: Sendable {
        public var method: String
        public var path: String
        public var head: String
    }

    /// One accepted connection, written by the handler.
    public final class Connection: @unchecked Sendable {
        let fd: Int32
        private weak var server: ScriptedHTTPServer?

        init(fd: Int32, server: ScriptedHTTPServer) {
            self.fd = fd
            self.server = server
        }

        /// False once the peer has gone or the server stopped: the handler should return.
        @discardableResult
        public func send(_ bytes: [UInt8]) -> Bool {
            var offset = 0
            while offset < bytes.count {
                let written = bytes.withUnsafeBufferPointer { Glibc.send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
                if written <= 0 { return false }
                offset += written
            }
            return server?.isRunning ?? false
        }

        @discardableResult
        public func send(_ text: String) -> Bool { send(Array(text.utf8)) }

        /// Makes this connection a tunnel to 127.0.0.1:`port` (a proxy's CONNECT): bytes are copied both ways until
        /// either side closes. The request head was read byte by byte, so nothing of what follows it is lost.
        public func splice(toPort port: Int) {
            let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard upstream >= 0 else { return }
            defer { Glibc.close(upstream) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            address.sin_port = UInt16(port).bigEndian
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard connected == 0 else { return }
            let client = fd
            let done = DispatchSemaphore(value: 0)
            for (from, to) in [(client, upstream), (upstream, client)] {
                Thread {
                    var buffer = [UInt8](repeating: 0, count: 65536)
                    while true {
                        let count = buffer.withUnsafeMutableBytes { recv(from, $0.baseAddress, $0.count, 0) }
                        guard count > 0 else { break }
                        let written = buffer.withUnsafeBytes { Glibc.send(to, $0.baseAddress, count, Int32(MSG_NOSIGNAL)) }
                        guard written == count else { break }
                    }
                    shutdown(to, Int32(SHUT_WR))
                    done.signal()
                }.start()
            }
            done.wait()
            done.wait()
        }
    }

    /// A count a handler can bump from its thread.
    public final class Counter: @unchecked Sendable {
        private let lock = NSLock()
        private var count = 0
        public init() {}
        public func increment() { lock.withLock { count += 1 } }
        public var value: Int { lock.withLock { count } }
    }

    /// Texts a handler records from its thread (request heads, say).
    public final class Log: @unchecked Sendable {
        private let lock = NSLock()
        private var texts: [String] = []
        public init() {}
        public func append(_ text: String) { lock.withLock { texts.append(text) } }
        public var entries: [String] { lock.withLock { texts } }
    }

    public private(set) var port = 0
    private let listener: Int32
    private let handler: @Sendable (Request, Connection) -> Void
    private let lock = NSLock()
    private var running = true
    private var open: Set<Int32> = []
    private var requestCount = 0

    public init(handler: @escaping @Sendable (Request, Connection) -> Void) throws {
        self.handler = handler
        listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard listener >= 0 else { throw POSIXError(.EMFILE) }
        var yes: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(listener, 16) == 0 else {
            Glibc.close(listener)
            throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EADDRINUSE)
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) }
        }
        port = Int(UInt16(bigEndian: address.sin_port))
        let thread = Thread { [self] in acceptLoop() }
        thread.start()
    }

    public var isRunning: Bool { lock.withLock { running } }
    public var requests: Int { lock.withLock { requestCount } }

    public func url(_ path: String) -> String { "http://127.0.0.1:\(port)\(path)" }

    public func stop() {
        let fds: Set<Int32> = lock.withLock {
            guard running else { return [] }
            running = false
            return open
        }
        shutdown(listener, Int32(SHUT_RDWR))
        for fd in fds { shutdown(fd, Int32(SHUT_RDWR)) }
    }

    deinit {
        stop()
        Glibc.close(listener)
    }

    private func acceptLoop() {
        while isRunning {
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else {
                if errno == EINTR { continue }
                return
            }
            let accepted: Bool = lock.withLock {
                guard running else { return false }
                open.insert(fd)
                return true
            }
            guard accepted else {
                Glibc.close(fd)
                return
            }
            let thread = Thread { [self] in serve(fd) }
            thread.start()
        }
    }

    private func serve(_ fd: Int32) {
        defer {
            lock.withLock { _ = open.remove(fd) }
            Glibc.close(fd)
        }
        var head: [UInt8] = []
        var byte: UInt8 = 0
        while !head.suffix(4).elementsEqual([13, 10, 13, 10]) {
            guard recv(fd, &byte, 1, 0) == 1, head.count < 65536 else { return }
            head.append(byte)
        }
        let text = String(decoding: head, as: UTF8.self)
        let first = text.split(separator: "\r\n").first.map { $0.split(separator: " ") } ?? []
        let request = Request(method: first.first.map(String.init) ?? "", path: first.count > 1 ? String(first[1]) : "", head: text)
        lock.withLock { requestCount += 1 }
        handler(request, Connection(fd: fd, server: self))
    }
}
