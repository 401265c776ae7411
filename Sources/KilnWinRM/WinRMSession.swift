import Foundation
import KilnDigest
import KilnGuest
import KilnSupport

/// A Windows guest reached over WinRM, as a `GuestSession`: commands are cmd.exe command lines.
public final class WinRMSession: GuestSession, @unchecked Sendable {
    public let client: WinRMClient
    /// The address under which the guest reaches the host's loopback (QEMU user networking: 10.0.2.2). With it,
    /// uploads are served over HTTP from the host and fetched by the guest; without, they stream over WinRM.
    public let hostAddressForGuest: String?

    public init(client: WinRMClient, hostAddressForGuest: String? = nil) {
        self.client = client
        self.hostAddressForGuest = hostAddressForGuest
    }

    public func exec(_ command: String, stdin: [UInt8]?, output: @escaping @Sendable (OutputChunk) -> Void) async throws(KilnError) -> ExecResult {
        try await client.run(command, stdin: stdin, output: output)
    }

    /// Copies a host file into the guest and checks its sha256 there.
    public func upload(localPath: String, remotePath: String) async throws(KilnError) {
        let expected = try SHA256Digest.hex(ofFile: localPath)
        let collected = OutputCollector()
        let result: ExecResult
        if let host = hostAddressForGuest {
            let share = try LoopbackFileShare(path: localPath)
            defer { share.stop() }
            let script = PowerShell.downloadFileScript(url: "http://\(host):\(share.port)/\(share.token)", destination: remotePath)
            result = try await client.run(PowerShell.commandLine(script), stdin: nil) { collected.append($0) }
        } else {
            guard let handle = FileHandle(forReadingAtPath: localPath) else {
                throw KilnError(.io, "cannot read \(localPath)")
            }
            defer { try? handle.close() }
            // Base64 lines of 3 KiB each, several lines per piece; the guest decodes line by line.
            let input: @Sendable () throws(KilnError) -> [UInt8]? = {
                let data = handle.readData(ofLength: 48 * 1024)
                guard !data.isEmpty else { return nil }
                var text = ""
                var offset = 0
                while offset < data.count {
                    let end = min(data.count, offset + 3072)
                    text += data[data.startIndex + offset..<data.startIndex + end].base64EncodedString() + "\n"
                    offset = end
                }
                return Array(text.utf8)
            }
            result = try await client.run(PowerShell.commandLine(PowerShell.receiveFileScript(destination: remotePath)), input: input) { collected.append($0) }
        }
        guard result.succeeded else {
            throw KilnError(.external, "uploading \(localPath) to \(remotePath) failed (\(result)): \(collected.stderrText.suffix(600))")
        }
        let reported = collected.stdoutText.split(whereSeparator: \.isNewline).last { $0.hasPrefix("sha256:") }
            .map { String($0.dropFirst("sha256:".count)).trimmingCharacters(in: .whitespaces).lowercased() }
        guard let reported else {
            throw KilnError(.external, "uploading \(localPath) to \(remotePath): the guest reported no sha256 (output: \(collected.stdoutText.suffix(300)))")
        }
        guard reported == expected else {
            throw KilnError(.checksumMismatch, "uploading \(localPath) to \(remotePath): the guest's copy has sha256 \(reported), expected \(expected)")
        }
    }

    public func close() async {
        client.close()
    }

    /// Waits until the service runs a command for these credentials, like the SSH wait: every failure before the
    /// deadline (a refused connection, a listener not there yet, credentials not yet set by setup) is retried,
    /// with progress every 30 s.
    public static func waitUntilReady(_ options: WinRMOptions, timeout: Duration, hostAddressForGuest: String? = nil,
                                      progress: @escaping @Sendable (String) -> Void = { _ in },
                                      attemptFailed: @escaping @Sendable (KilnError) -> Void = { _ in },
                                      abort: @escaping @Sendable () async -> KilnError? = { nil }) async throws(KilnError) -> WinRMSession {
        let clock = ContinuousClock()
        let start = clock.now
        var lastReport = start
        var lastError = "no answer yet"
        while clock.now - start < timeout {
            if Task.isCancelled { throw KilnError(.cancelled, "canceled while waiting for WinRM") }
            if let reason = await abort() { throw reason }
            var quick = options
            quick.retries = 0
            let client = WinRMClient(quick)
            do {
                let result = try await client.run("echo kiln-ready", output: { _ in })
                if result.succeeded {
                    var pinned = options
                    if options.endpoint.secure, pinned.pinnedCertificateSHA256 == nil { pinned.pinnedCertificateSHA256 = client.peerCertificateSHA256 }
                    client.close()
                    return WinRMSession(client: WinRMClient(pinned), hostAddressForGuest: hostAddressForGuest)
                }
                lastError = "`echo` ended with \(result)"
                attemptFailed(KilnError(.external, lastError))
            } catch where error.code == .cancelled {
                throw error
            } catch {
                lastError = error.message
                attemptFailed(error)
            }
            client.close()
            if clock.now - lastReport >= .seconds(30) {
                progress("waiting for WinRM at \(options.endpoint) (\(DurationText.format(clock.now - start)) of \(DurationText.format(timeout))): \(lastError)")
                lastReport = clock.now
            }
            try? await Task.sleep(for: .seconds(2))
        }
        throw KilnError(.timeout, "WinRM at \(options.endpoint) did not accept a command within \(DurationText.format(timeout)): \(lastError)")
    }
}

/// Serves one file on 127.0.0.1 under an unguessable path, for the guest to fetch through the user-mode network
/// gateway. Stops with `stop()`.
public final class LoopbackFileShare: @unchecked Sendable {
    public let port: Int
    public let token = UUID().uuidString.lowercased()
    private let path: String
    private let listener: Int32
    private let stopped = Locked(false)

    public init(path: String) throws(KilnError) {
        self.path = path
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.listener = listener
        guard listener >= 0 else { throw KilnError(.io, "cannot create a socket: \(String(cString: strerror(errno)))") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) } }
        guard bound == 0, listen(listener, 8) == 0 else {
            close(listener)
            port = 0
            throw KilnError(.io, "cannot listen on 127.0.0.1: \(String(cString: strerror(errno)))")
        }
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) } }
        port = Int(UInt16(bigEndian: address.sin_port))
        let thread = Thread { [self] in acceptLoop() }
        thread.start()
    }

    private func acceptLoop() {
        while !stopped.current {
            let client = accept(listener, nil, nil)
            guard client >= 0 else { if stopped.current { return } else { continue } }
            serve(client)
            close(client)
        }
    }

    private func serve(_ client: Int32) {
        var timeout = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var request: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !request.containsHeadEnd, request.count < 65536 {
            let count = recv(client, &buffer, buffer.count, 0)
            guard count > 0 else { return }
            request += buffer[0..<count]
        }
        let line = String(decoding: request.prefix { $0 != 13 }, as: UTF8.self).split(separator: " ")
        func respond(_ status: String, _ headers: String = "Content-Length: 0\r\n") {
            let head = Array("HTTP/1.1 \(status)\r\n\(headers)Connection: close\r\n\r\n".utf8)
            _ = head.withUnsafeBufferPointer { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        }
        guard line.count >= 2, line[0] == "GET", line[1] == "/" + token, let handle = FileHandle(forReadingAtPath: path) else {
            respond("404 Not Found")
            return
        }
        defer { try? handle.close() }
        let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        respond("200 OK", "Content-Type: application/octet-stream\r\nContent-Length: \(size)\r\n")
        while true {
            let data = handle.readData(ofLength: 1 << 20)
            if data.isEmpty { return }
            var offset = 0
            while offset < data.count {
                let sent = data.withUnsafeBytes { send(client, $0.baseAddress! + offset, data.count - offset, Int32(MSG_NOSIGNAL)) }
                guard sent > 0 else { return }
                offset += sent
            }
        }
    }

    public func stop() {
        guard !stopped.withLock({ let was = $0; $0 = true; return was }) else { return }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    deinit { stop() }
}

private extension Array where Element == UInt8 {
    var containsHeadEnd: Bool {
        guard count >= 4 else { return false }
        for index in 0...(count - 4) where self[index] == 13 && self[index + 1] == 10 && self[index + 2] == 13 && self[index + 3] == 10 {
            return true
        }
        return false
    }
}
