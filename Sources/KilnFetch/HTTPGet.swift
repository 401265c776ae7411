import CKilnShim
import Foundation
import KilnSupport

#if canImport(Glibc)
import Glibc
#endif

/// One HTTP/1.1 GET on its own connection (TLS through OpenSSL, the certificate verified against the system's
/// trust store and the host name), its body streamed to a file descriptor. Kiln's own client rather than
/// URLSession: on Linux, URLSession's delegate callbacks all go through one shared queue, so a fast body delays
/// cancellation and the size check by tens of seconds; here every limit is checked as the bytes arrive, and
/// `abort()` shuts the socket down, which ends a blocked read at once.
final class HTTPGet: @unchecked Sendable {
    enum Outcome {
        case complete(bytes: UInt64)
        /// A 301, 302, 303, 307 or 308 with its Location, resolved against the request's URL; not followed here.
        case redirect(URL)
    }

    let url: URL
    let host: String
    let port: Int
    let secure: Bool
    /// The HTTP proxy the environment names for this URL, if any (see `HTTPProxy`).
    let proxy: HTTPProxy?
    /// Waiting longer than this for the next bytes (or for the connection) fails the download.
    var idleTimeoutSeconds = 60
    static let maximumHeadBytes = 64 << 10

    private let lock = NSLock()
    private var fd: Int32 = -1
    private var aborted = false
    private var tls: OpaquePointer?
    private var pending: [UInt8] = []
    private var uri: String { url.absoluteString }

    init(_ url: URL, environment: [String: String] = ProcessInfo.processInfo.environment) throws(KilnError) {
        guard let scheme = url.scheme?.lowercased(), scheme == "http" || scheme == "https", let host = url.host, !host.isEmpty else {
            throw KilnError(.invalidArgument, "expected an http or https URL, found \"\(url.absoluteString)\"")
        }
        self.url = url
        self.host = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        secure = scheme == "https"
        port = url.port ?? (secure ? 443 : 80)
        proxy = try HTTPProxy.forTarget(host: self.host, secure: secure, environment: environment)
    }

    /// Ends the transfer from any thread: a call blocked in `perform` returns with an error at once.
    func abort() {
        lock.withLock {
            aborted = true
            if fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)) }
        }
    }

    var wasAborted: Bool { lock.withLock { aborted } }

    private func close() {
        if let tls {
            kiln_tls_free(tls)
            self.tls = nil
        }
        lock.withLock {
            if fd >= 0 { Glibc.close(fd) }
            fd = -1
        }
    }

    deinit { close() }

    /// Connects, sends the request and reads the response: a redirect is returned, a 2xx body is written to
    /// `output` (at most `limit` bytes), anything else is an error naming the URL.
    func perform(output: Int32, limit: UInt64) throws(KilnError) -> Outcome {
        defer { close() }
        let hostHeader = (host.contains(":") ? "[\(host)]" : host) + (url.port.map { ":\($0)" } ?? "")
        try connect(hostHeader: hostHeader)
        var target = url.path.isEmpty ? "/" : (URLComponents(url: url, resolvingAgainstBaseURL: false)?.percentEncodedPath ?? url.path)
        if target.isEmpty { target = "/" }
        if let query = url.query { target += "?" + query }
        var extra = ""
        if let proxy, !secure {
            // Through a proxy, plain http asks for the absolute URL (RFC 9112, 3.2.2).
            target = "http://\(hostHeader)\(target)"
            if let authorization = proxy.authorization { extra = "Proxy-Authorization: \(authorization)\r\n" }
        }
        let request = "GET \(target) HTTP/1.1\r\nHost: \(hostHeader)\r\n\(extra)User-Agent: kiln\r\nAccept: */*\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n"
        try send(Array(request.utf8))

        let head = try readHead()
        let lines = String(decoding: head, as: UTF8.self).components(separatedBy: "\r\n")
        let statusParts = lines[0].split(separator: " ", maxSplits: 2)
        guard statusParts.count >= 2, statusParts[0].hasPrefix("HTTP/1."), let status = Int(statusParts[1]) else {
            throw KilnError(.io, "cannot download \(uri): the server answered with something that is not HTTP: \"\(lines[0].prefix(80))\"")
        }
        var headers: [(name: String, value: String)] = []
        for line in lines.dropFirst() where !line.isEmpty {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers.append((line[..<colon].lowercased(), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
        }
        func header(_ name: String) -> String? { headers.first { $0.name == name }?.value }

        if [301, 302, 303, 307, 308].contains(status) {
            guard let location = header("location"), let next = URL(string: location, relativeTo: url)?.absoluteURL else {
                throw KilnError(.io, "cannot download \(uri): HTTP \(status) without a usable Location")
            }
            return .redirect(next)
        }
        guard (200..<300).contains(status) else {
            throw KilnError(.io, "cannot download \(uri): HTTP \(status)\(statusParts.count > 2 ? " " + statusParts[2] : "")")
        }
        if header("transfer-encoding")?.lowercased().contains("chunked") == true {
            return .complete(bytes: try readChunked(to: output, limit: limit))
        }
        if let text = header("content-length") {
            guard !text.isEmpty, text.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }) else {
                throw KilnError(.io, "cannot download \(uri): the server sent Content-Length \"\(text.prefix(40))\"; expected a number of bytes")
            }
            // Refused before reading the body.
            guard let length = UInt64(text), length <= limit else {
                throw Fetcher.tooLarge(uri, limit: limit, received: "the server announced Content-Length \(text.prefix(40)); not downloaded")
            }
            return .complete(bytes: try copyBody(to: output, limit: limit, exactly: length))
        }
        return .complete(bytes: try copyBody(to: output, limit: limit, exactly: nil))
    }

    // MARK: Connection

    /// Connects to the server, or to the proxy (and through it, for https, with CONNECT), then starts TLS.
    private func connect(hostHeader: String) throws(KilnError) {
        let peerHost = proxy?.host ?? host
        let peerPort = proxy?.port ?? port
        let through = proxy.map { " through the proxy \($0.host):\($0.port)" } ?? ""
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(peerHost, String(peerPort), &hints, &list)
        guard status == 0, let first = list else {
            throw KilnError(.io, "cannot download \(uri): cannot resolve \(peerHost)\(through.isEmpty ? "" : " (the proxy)"): \(String(cString: gai_strerror(status)))")
        }
        defer { freeaddrinfo(list) }
        var lastError = "no address"
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let address = entry {
            entry = address.pointee.ai_next
            let socketFD = socket(address.pointee.ai_family, address.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), address.pointee.ai_protocol)
            guard socketFD >= 0 else { lastError = String(cString: strerror(errno)); continue }
            let registered: Bool = lock.withLock {
                guard !aborted else { return false }
                fd = socketFD
                return true
            }
            guard registered else {
                Glibc.close(socketFD)
                throw Fetcher.cancelled(uri)
            }
            if let problem = connect(socketFD, address.pointee.ai_addr, address.pointee.ai_addrlen) {
                lastError = problem
                close()
                if wasAborted { throw Fetcher.cancelled(uri) }
                continue
            }
            var timeout = timeval(tv_sec: idleTimeoutSeconds, tv_usec: 0)
            setsockopt(socketFD, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(socketFD, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            if secure, let proxy {
                try tunnel(through: proxy, hostHeader: hostHeader)
            }
            if secure {
                var error = [CChar](repeating: 0, count: 512)
                guard let session = kiln_tls_connect(socketFD, host, 1, &error, error.count) else {
                    if wasAborted { throw Fetcher.cancelled(uri) }
                    let reason = String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                        .replacingOccurrences(of: "; use --insecure for a self-signed certificate", with: "")
                    throw KilnError(.io, "cannot download \(uri): \(reason)")
                }
                tls = session
            }
            return
        }
        throw KilnError(.io, "cannot download \(uri): cannot connect to \(peerHost):\(peerPort)\(through.isEmpty ? "" : " (the proxy)"): \(lastError)")
    }

    /// Asks the proxy for a tunnel to the server (RFC 9110, 9.3.6); TLS then runs through it end to end.
    private func tunnel(through proxy: HTTPProxy, hostHeader: String) throws(KilnError) {
        let authority = (host.contains(":") ? "[\(host)]" : host) + ":\(port)"
        var request = "CONNECT \(authority) HTTP/1.1\r\nHost: \(authority)\r\nUser-Agent: kiln\r\n"
        if let authorization = proxy.authorization { request += "Proxy-Authorization: \(authorization)\r\n" }
        try send(Array((request + "\r\n").utf8))
        let head = try readHead()
        let statusLine = String(decoding: head, as: UTF8.self).components(separatedBy: "\r\n")[0]
        let parts = statusLine.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]), (200..<300).contains(status) else {
            throw KilnError(.io, "cannot download \(uri): the proxy \(proxy.host):\(proxy.port) refused a tunnel to \(authority): \"\(statusLine.prefix(80))\"")
        }
        // Anything after the proxy's answer already belongs to TLS, which reads the socket itself.
        guard pending.isEmpty else {
            throw KilnError(.io, "cannot download \(uri): the proxy \(proxy.host):\(proxy.port) sent data after its answer to CONNECT")
        }
    }

    /// Non-blocking connect with the idle timeout as deadline; nil on success, otherwise why not.
    private func connect(_ socketFD: Int32, _ address: UnsafeMutablePointer<sockaddr>, _ length: socklen_t) -> String? {
        let flags = fcntl(socketFD, F_GETFL)
        _ = fcntl(socketFD, F_SETFL, flags | O_NONBLOCK)
        defer { _ = fcntl(socketFD, F_SETFL, flags) }
        if Glibc.connect(socketFD, address, length) == 0 { return nil }
        guard errno == EINPROGRESS else { return String(cString: strerror(errno)) }
        var poller = pollfd(fd: socketFD, events: Int16(POLLOUT), revents: 0)
        let ready = poll(&poller, 1, Int32(idleTimeoutSeconds * 1000))
        guard ready > 0 else { return ready == 0 ? "timed out after \(idleTimeoutSeconds) s" : String(cString: strerror(errno)) }
        var error: Int32 = 0
        var size = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(socketFD, SOL_SOCKET, SO_ERROR, &error, &size)
        return error == 0 ? nil : String(cString: strerror(error))
    }

    private func send(_ bytes: [UInt8]) throws(KilnError) {
        var offset = 0
        while offset < bytes.count {
            let written: Int = bytes.withUnsafeBufferPointer { buffer in
                let start = buffer.baseAddress! + offset
                if let tls { return kiln_tls_write(tls, start, buffer.count - offset) }
                return Glibc.send(fd, start, buffer.count - offset, Int32(MSG_NOSIGNAL))
            }
            guard written > 0 else {
                if wasAborted { throw Fetcher.cancelled(uri) }
                throw KilnError(.io, "cannot download \(uri): sending the request failed: \(String(cString: strerror(errno)))")
            }
            offset += written
        }
    }

    // MARK: Reading

    /// Appends what arrives next to `pending`; false at the end of the stream.
    private func fill() throws(KilnError) -> Bool {
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        let count: Int = buffer.withUnsafeMutableBufferPointer { pointer in
            if let tls { return kiln_tls_read(tls, pointer.baseAddress!, pointer.count) }
            return recv(fd, pointer.baseAddress!, pointer.count, 0)
        }
        if wasAborted { throw Fetcher.cancelled(uri) }
        if count > 0 {
            pending += buffer[0..<count]
            return true
        }
        if count == 0 { return false }
        let code = errno
        if code == EAGAIN || code == EWOULDBLOCK {
            throw KilnError(.timeout, "cannot download \(uri): no data for \(idleTimeoutSeconds) s")
        }
        throw KilnError(.io, "cannot download \(uri): reading failed: \(String(cString: strerror(code)))")
    }

    private func readHead() throws(KilnError) -> [UInt8] {
        var searchFrom = 0
        while true {
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
            guard pending.count <= Self.maximumHeadBytes else {
                throw KilnError(.io, "cannot download \(uri): the server sent more than \(Self.maximumHeadBytes) bytes without ending its headers")
            }
            guard try fill() else {
                throw KilnError(.io, "cannot download \(uri): the server closed the connection before answering")
            }
        }
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
            guard pending.count <= Self.maximumHeadBytes else {
                throw KilnError(.io, "cannot download \(uri): the server sent a chunk-size line of more than \(Self.maximumHeadBytes) bytes")
            }
            guard try fill() else {
                throw KilnError(.io, "cannot download \(uri): the server closed the connection in the middle of a chunked body")
            }
        }
    }

    /// Writes `bytes` to `output`, counting them into `total` and cutting off past `limit`.
    private func deliver(_ bytes: ArraySlice<UInt8>, to output: Int32, total: inout UInt64, limit: UInt64) throws(KilnError) {
        total += UInt64(bytes.count)
        if total > limit {
            throw Fetcher.tooLarge(uri, limit: limit, received: "received \(total) bytes and cut off")
        }
        let written = bytes.withUnsafeBytes { pointer -> Bool in
            var offset = 0
            while offset < pointer.count {
                let step = write(output, pointer.baseAddress! + offset, pointer.count - offset)
                if step < 0 && errno == EINTR { continue }
                guard step > 0 else { return false }
                offset += step
            }
            return true
        }
        guard written else {
            throw KilnError(.io, "cannot download \(uri): writing the download failed: \(String(cString: strerror(errno)))")
        }
    }

    /// A body of `exactly` bytes, or (nil) up to the end of the connection.
    private func copyBody(to output: Int32, limit: UInt64, exactly length: UInt64?) throws(KilnError) -> UInt64 {
        var total: UInt64 = 0
        while true {
            if !pending.isEmpty {
                let take = length.map { Int(min(UInt64(pending.count), $0 - total)) } ?? pending.count
                try deliver(pending[0..<take], to: output, total: &total, limit: limit)
                pending.removeFirst(take)
            }
            if let length, total == length { return total }
            guard try fill() else {
                if let length {
                    throw KilnError(.io, "cannot download \(uri): the server closed the connection after \(total) of \(length) bytes")
                }
                return total
            }
        }
    }

    private func readChunked(to output: Int32, limit: UInt64) throws(KilnError) -> UInt64 {
        var total: UInt64 = 0
        while true {
            let sizeLine = try readLine()
            let digits = sizeLine.prefix { $0 != ";" }.trimmingCharacters(in: .whitespaces)
            guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isHexDigit }) else {
                throw KilnError(.io, "cannot download \(uri): the server sent a bad chunk size \"\(sizeLine.prefix(20))\"")
            }
            guard let size = UInt64(digits, radix: 16), size <= limit - total else {
                throw Fetcher.tooLarge(uri, limit: limit, received: "received \(total) bytes, then a chunk of 0x\(digits.prefix(20)) bytes; cut off")
            }
            if size == 0 {
                var trailers = 0
                while try !readLine().isEmpty {
                    trailers += 1
                    guard trailers < 100 else {
                        throw KilnError(.io, "cannot download \(uri): the server sent more than 100 trailer lines")
                    }
                }
                return total
            }
            var remaining = size
            while remaining > 0 {
                if pending.isEmpty {
                    guard try fill() else {
                        throw KilnError(.io, "cannot download \(uri): the server closed the connection in the middle of a chunk")
                    }
                }
                let take = Int(min(UInt64(pending.count), remaining))
                try deliver(pending[0..<take], to: output, total: &total, limit: limit)
                pending.removeFirst(take)
                remaining -= UInt64(take)
            }
            guard try readLine().isEmpty else {
                throw KilnError(.io, "cannot download \(uri): the server sent a chunk longer than its size")
            }
        }
    }
}
