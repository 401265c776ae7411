import CKilnShim
import Foundation
import KilnSupport

#if canImport(Glibc)
import Glibc
#endif

extension KilnError.Code {
    /// The TCP or TLS connection failed or dropped: the caller may reconnect.
    public static let connection = KilnError.Code("connection")
}

/// Where a WinRM service listens: `http://host:5985/wsman`, `https://host:5986/wsman`.
public struct WinRMEndpoint: Sendable, Equatable, CustomStringConvertible {
    public var secure: Bool
    public var host: String
    public var port: Int
    public var path: String

    public init(secure: Bool, host: String, port: Int? = nil, path: String = "/wsman") {
        self.secure = secure
        self.host = host
        self.port = port ?? (secure ? 5986 : 5985)
        self.path = path
    }

    /// Parses `http[s]://host[:port][/path]`; the port defaults to 5985/5986 and the path to /wsman.
    public init(url: String) throws(KilnError) {
        guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased(),
              scheme == "http" || scheme == "https", let host = components.host, !host.isEmpty else {
            throw KilnError(.invalidArgument, "expected a WinRM URL such as http://HOST:5985/wsman or https://HOST:5986/wsman, found \"\(url)\"")
        }
        self.init(secure: scheme == "https", host: host, port: components.port,
                  path: components.path.isEmpty || components.path == "/" ? "/wsman" : components.path)
    }

    public var description: String {
        let bracketed = host.contains(":") ? "[\(host)]" : host
        return "\(secure ? "https" : "http")://\(bracketed):\(port)\(path)"
    }
}

/// An HTTP/1.1 response: status, headers (names as sent), body.
struct HTTPResponse: Sendable {
    var status: Int
    var reason: String
    var headers: [(name: String, value: String)]
    var body: [UInt8]

    func header(_ name: String) -> String? {
        headers.first { $0.name.caseInsensitiveCompare(name) == .orderedSame }?.value
    }

    /// Every value of a header that may repeat (WWW-Authenticate).
    func headers(_ name: String) -> [String] {
        headers.filter { $0.name.caseInsensitiveCompare(name) == .orderedSame }.map(\.value)
    }
}

/// One persistent HTTP/1.1 connection, optionally over TLS (OpenSSL), used by one request at a time. WinRM's NTLM
/// authentication and message encryption belong to a TCP connection, so the client owns exactly one and knows when
/// it is replaced. Calls block; `WinRMClient` runs them off the cooperative thread pool.
final class HTTPConnection: @unchecked Sendable {
    let endpoint: WinRMEndpoint
    let verifyCertificate: Bool
    let pinnedCertificateSHA256: [UInt8]?
    private let connectTimeout: Duration
    private var fd: Int32 = -1
    private var tls: OpaquePointer?
    private var pending: [UInt8] = []
    private let fdLock = NSLock()
    private(set) var peerCertificateSHA256: [UInt8]?
    /// The largest reply body read: far above any WS-Management envelope (Kiln asks for 150 KiB ones), so that a
    /// broken or hostile service announcing or streaming gigabytes gets an error, not all of Kiln's memory.
    var maximumBodyBytes = 64 << 20
    /// The largest status line plus headers, and the longest chunk-size line.
    var maximumHeadBytes = 64 << 10

    init(endpoint: WinRMEndpoint, verifyCertificate: Bool, pinnedCertificateSHA256: [UInt8]? = nil, connectTimeout: Duration = .seconds(10)) {
        self.endpoint = endpoint
        self.verifyCertificate = verifyCertificate
        self.pinnedCertificateSHA256 = pinnedCertificateSHA256
        self.connectTimeout = connectTimeout
        signal(SIGPIPE, SIG_IGN)
    }

    var isOpen: Bool { fdLock.withLock { fd >= 0 } }

    func open() throws(KilnError) {
        close()
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(endpoint.host, String(endpoint.port), &hints, &list)
        guard status == 0, let first = list else {
            throw KilnError(.connection, "cannot resolve \(endpoint.host): \(String(cString: gai_strerror(status)))")
        }
        defer { freeaddrinfo(list) }
        var lastError = "no address"
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let address = entry {
            entry = address.pointee.ai_next
            let socketFD = socket(address.pointee.ai_family, address.pointee.ai_socktype, address.pointee.ai_protocol)
            guard socketFD >= 0 else { lastError = String(cString: strerror(errno)); continue }
            if let problem = connect(socketFD, address.pointee.ai_addr, address.pointee.ai_addrlen, timeout: connectTimeout) {
                lastError = problem
                Glibc.close(socketFD)
                continue
            }
            var one: Int32 = 1
            setsockopt(socketFD, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            fdLock.withLock { fd = socketFD }
            pending = []
            if endpoint.secure {
                var error = [CChar](repeating: 0, count: 512)
                guard let session = kiln_tls_connect(socketFD, endpoint.host, verifyCertificate ? 1 : 0, &error, error.count) else {
                    close()
                    throw KilnError(.connection, "\(endpoint): \(String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))")
                }
                tls = session
                var digest = [UInt8](repeating: 0, count: 32)
                peerCertificateSHA256 = kiln_tls_peer_sha256(session, &digest) == 1 ? digest : nil
                if let pin = pinnedCertificateSHA256, peerCertificateSHA256 != pin {
                    let seen = peerCertificateSHA256.map { $0.map { String(format: "%02x", $0) }.joined() } ?? "none"
                    close()
                    // Not a connection error: retrying would not change the certificate.
                    throw KilnError(.external, "\(endpoint) presented a certificate (sha256 \(seen)) other than the one pinned when the guest first answered (\(pin.map { String(format: "%02x", $0) }.joined())); refusing it")
                }
            }
            return
        }
        throw KilnError(.connection, "cannot connect to \(endpoint): \(lastError)")
    }

    /// Non-blocking connect with a deadline; nil on success, otherwise why not.
    private func connect(_ socketFD: Int32, _ address: UnsafeMutablePointer<sockaddr>, _ length: socklen_t, timeout: Duration) -> String? {
        let flags = fcntl(socketFD, F_GETFL)
        _ = fcntl(socketFD, F_SETFL, flags | O_NONBLOCK)
        defer { _ = fcntl(socketFD, F_SETFL, flags) }
        if Glibc.connect(socketFD, address, length) == 0 { return nil }
        guard errno == EINPROGRESS else { return String(cString: strerror(errno)) }
        var poller = pollfd(fd: socketFD, events: Int16(POLLOUT), revents: 0)
        let ready = poll(&poller, 1, Int32(timeout.inSeconds * 1000))
        guard ready > 0 else { return ready == 0 ? "timed out after \(DurationText.format(timeout))" : String(cString: strerror(errno)) }
        var error: Int32 = 0
        var size = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(socketFD, SOL_SOCKET, SO_ERROR, &error, &size)
        return error == 0 ? nil : String(cString: strerror(error))
    }

    /// Closes the connection. Safe from any thread; a call blocked in `roundTrip` fails at once.
    func abort() {
        fdLock.withLock {
            if fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)) }
        }
    }

    func close() {
        if let tls {
            kiln_tls_free(tls)
            self.tls = nil
        }
        fdLock.withLock {
            if fd >= 0 { Glibc.close(fd) }
            fd = -1
        }
        pending = []
    }

    /// Sends one request and reads its response. `readTimeout` bounds each wait for bytes.
    func roundTrip(method: String = "POST", headers: [(String, String)], body: [UInt8], readTimeout: Duration) throws(KilnError) -> HTTPResponse {
        guard isOpen else { throw KilnError(.connection, "not connected to \(endpoint)") }
        var head = "\(method) \(endpoint.path) HTTP/1.1\r\nHost: \(endpoint.host):\(endpoint.port)\r\n"
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        head += "Content-Length: \(body.count)\r\n\r\n"
        setReadTimeout(readTimeout)
        try write(Array(head.utf8) + body)

        let headerBytes = try readHead()
        let lines = String(decoding: headerBytes, as: UTF8.self).components(separatedBy: "\r\n")
        let statusParts = lines[0].split(separator: " ", maxSplits: 2)
        guard statusParts.count >= 2, statusParts[0].hasPrefix("HTTP/1."), let status = Int(statusParts[1]) else {
            close()
            throw KilnError(.connection, "\(endpoint) answered with something that is not HTTP: \"\(lines[0].prefix(80))\"")
        }
        var responseHeaders: [(name: String, value: String)] = []
        for line in lines.dropFirst() where !line.isEmpty {
            guard let colon = line.firstIndex(of: ":") else { continue }
            responseHeaders.append((String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
        }
        var response = HTTPResponse(status: status, reason: statusParts.count > 2 ? String(statusParts[2]) : "", headers: responseHeaders, body: [])
        if response.header("Transfer-Encoding")?.lowercased().contains("chunked") == true {
            response.body = try readChunked()
        } else if let text = response.header("Content-Length") {
            response.body = try readExactly(try contentLength(text))
        } else if status != 204 && status != 304 && !(100..<200).contains(status) {
            response.body = try readToEnd()
            close()
        }
        if response.header("Connection")?.lowercased() == "close" { close() }
        return response
    }

    /// A Content-Length as RFC 9110 has it (digits only: no sign, no spaces inside), within `maximumBodyBytes`.
    private func contentLength(_ text: String) throws(KilnError) -> Int {
        guard !text.isEmpty, text.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }) else {
            close()
            throw KilnError(.external, "\(endpoint) sent a reply with Content-Length \"\(text.prefix(40))\"; expected a number of bytes")
        }
        guard let length = Int(text), length <= maximumBodyBytes else {
            close()
            throw tooLarge("announced a body of \(text.prefix(40)) bytes (Content-Length)")
        }
        return length
    }

    private func tooLarge(_ what: String) -> KilnError {
        KilnError(.external, "\(endpoint) \(what); expected a reply of at most \(maximumBodyBytes) bytes (\(maximumBodyBytes >> 20) MiB) from a WinRM service")
    }

    private func setReadTimeout(_ timeout: Duration) {
        let seconds = max(1, timeout.inSeconds)
        var value = timeval(tv_sec: Int(seconds), tv_usec: 0)
        fdLock.withLock {
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
            _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
        }
    }

    private func write(_ bytes: [UInt8]) throws(KilnError) {
        var offset = 0
        while offset < bytes.count {
            let written: Int = bytes.withUnsafeBufferPointer { buffer in
                let start = buffer.baseAddress! + offset
                if let tls { return kiln_tls_write(tls, start, buffer.count - offset) }
                return send(fd, start, buffer.count - offset, Int32(MSG_NOSIGNAL))
            }
            guard written > 0 else {
                let reason = written < 0 && errno != 0 ? String(cString: strerror(errno)) : "closed"
                close()
                throw KilnError(.connection, "sending to \(endpoint) failed: \(reason)")
            }
            offset += written
        }
    }

    /// Reads more bytes into `pending`; false at end of stream.
    private func fill() throws(KilnError) -> Bool {
        var buffer = [UInt8](repeating: 0, count: 65536)
        let count: Int = buffer.withUnsafeMutableBufferPointer { pointer in
            if let tls { return kiln_tls_read(tls, pointer.baseAddress!, pointer.count) }
            return recv(fd, pointer.baseAddress!, pointer.count, 0)
        }
        if count > 0 {
            pending += buffer[0..<count]
            return true
        }
        if count == 0 { return false }
        let code = errno
        close()
        if code == EAGAIN || code == EWOULDBLOCK {
            throw KilnError(.connection, "\(endpoint) did not answer in time")
        }
        throw KilnError(.connection, "reading from \(endpoint) failed: \(String(cString: strerror(code)))")
    }

    private func readHead() throws(KilnError) -> [UInt8] {
        var searchFrom = 0
        while true {
            if pending.count >= 4 {
                var index = max(0, searchFrom - 3)
                while index + 3 < pending.count {
                    if pending[index] == 13, pending[index + 1] == 10, pending[index + 2] == 13, pending[index + 3] == 10 {
                        let head = Array(pending[0..<index])
                        pending.removeFirst(index + 4)
                        return head
                    }
                    index += 1
                }
                searchFrom = pending.count
                if pending.count > maximumHeadBytes {
                    close()
                    throw KilnError(.external, "\(endpoint) sent more than \(maximumHeadBytes) bytes without ending the reply's status line and headers")
                }
            }
            guard try fill() else {
                close()
                throw KilnError(.connection, "\(endpoint) closed the connection before answering")
            }
        }
    }

    private func readExactly(_ count: Int) throws(KilnError) -> [UInt8] {
        guard count >= 0 else {
            close()
            throw KilnError(.internalError, "asked to read \(count) bytes from \(endpoint)")
        }
        while pending.count < count {
            guard try fill() else {
                close()
                throw KilnError(.connection, "\(endpoint) closed the connection in the middle of a response")
            }
        }
        let bytes = Array(pending[0..<count])
        pending.removeFirst(count)
        return bytes
    }

    private func readLine() throws(KilnError) -> String {
        var searchFrom = 0
        while true {
            var index = max(0, searchFrom - 1)
            while index + 1 < pending.count {
                if pending[index] == 13, pending[index + 1] == 10 {
                    let line = String(decoding: pending[0..<index], as: UTF8.self)
                    pending.removeFirst(index + 2)
                    return line
                }
                index += 1
            }
            searchFrom = pending.count
            if pending.count > maximumHeadBytes {
                close()
                throw KilnError(.external, "\(endpoint) sent a line of more than \(maximumHeadBytes) bytes in a chunked reply")
            }
            guard try fill() else {
                close()
                throw KilnError(.connection, "\(endpoint) closed the connection in the middle of a chunked response")
            }
        }
    }

    private func readChunked() throws(KilnError) -> [UInt8] {
        var body: [UInt8] = []
        while true {
            let sizeLine = try readLine()
            // Hex digits only (Int(_:radix:) would take a sign), then optional extensions after ';'.
            let digits = sizeLine.prefix { $0 != ";" }.trimmingCharacters(in: .whitespaces)
            guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isHexDigit }) else {
                close()
                throw KilnError(.connection, "\(endpoint) sent a bad chunk size \"\(sizeLine.prefix(20))\"")
            }
            guard let size = Int(digits, radix: 16), size <= maximumBodyBytes - body.count else {
                close()
                throw tooLarge("sent a chunk of 0x\(digits.prefix(20)) bytes after \(body.count) bytes of body")
            }
            if size == 0 {
                var trailers = 0
                while try !readLine().isEmpty {
                    trailers += 1
                    guard trailers < 100 else {
                        close()
                        throw KilnError(.external, "\(endpoint) sent more than 100 trailer lines after a chunked reply")
                    }
                }
                return body
            }
            body += try readExactly(size)
            _ = try readLine()
        }
    }

    private func readToEnd() throws(KilnError) -> [UInt8] {
        while try fill() {
            if pending.count > maximumBodyBytes {
                close()
                throw tooLarge("sent a reply body of more than \(maximumBodyBytes) bytes (read to the end of the connection)")
            }
        }
        let bytes = pending
        pending = []
        return bytes
    }

    deinit { close() }
}
