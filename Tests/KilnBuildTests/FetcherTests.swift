import Foundation
@testable import KilnBuild
@testable import KilnFetch
import KilnMachine
import KilnSupport
import KilnTestSupport
import Testing

/// Downloads of what a template names, against servers on 127.0.0.1 that misbehave on purpose: cancelled mid-way,
/// too large (announced or streamed), redirected where they must not go, and file:// URIs naming what is not a file.
/// Serialized: one test sets SSL_CERT_FILE, which others' "certificate not trusted" must not see. Each passes its
/// own environment, so the machine's proxy settings play no part.
@Suite("Fetcher: downloads are bounded, cancellable and read files only", .serialized)
struct FetcherTests {
    /// A scratch folder per test.
    struct Folder {
        let path: String
        init() throws {
            path = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-fetch-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        }
        func remove() { try? FileManager.default.removeItem(atPath: path) }
        /// Everything in the folder: a fetch that failed leaves nothing, not even its temporary file.
        var contents: [String] { (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [] }
    }

    static func fetchError(_ uri: String, into folder: Folder, maximumBytes: UInt64? = nil, environment: [String: String] = [:]) async -> KilnError? {
        do {
            _ = try await Fetcher.fetch(uri, into: folder.path, name: "download", maximumBytes: maximumBytes, environment: environment)
            return nil
        } catch {
            return error
        }
    }

    @Test func anOrdinaryDownloadArrivesWhole() async throws {
        let body = String(repeating: "echo hello\n", count: 1000)
        let server = try ScriptedHTTPServer { _, connection in
            connection.send("HTTP/1.1 200 OK\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body)
        }
        defer { server.stop() }
        let folder = try Folder()
        defer { folder.remove() }
        let fetched = try await Fetcher.fetch(server.url("/script.sh"), into: folder.path, name: "script.sh", maximumBytes: 1 << 20, environment: [:])
        #expect(fetched.sizeBytes == UInt64(body.utf8.count))
        #expect(try String(contentsOfFile: fetched.localPath, encoding: .utf8) == body)
        #expect(folder.contents == ["script.sh"])
    }

    @Test func cancellingEndsADownloadAtOnceAndLeavesNothing() async throws {
        // A server that trickles 1 KiB every 50 ms for ever.
        let server = try ScriptedHTTPServer { _, connection in
            guard connection.send("HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\nConnection: close\r\n\r\n") else { return }
            let piece = [UInt8](repeating: 0x41, count: 1024)
            while connection.send(piece) { Thread.sleep(forTimeInterval: 0.05) }
        }
        defer { server.stop() }
        let folder = try Folder()
        defer { folder.remove() }
        let uri = server.url("/slow.bin")
        let download = Task { await Self.fetchError(uri, into: folder) }
        // Let it start receiving.
        try await Task.sleep(for: .seconds(1))
        #expect(folder.contents.contains { $0.contains(".partial-") }, "\(folder.contents)")
        let clock = ContinuousClock()
        let cancelledAt = clock.now
        download.cancel()
        let error = await download.value
        // The abort shuts the socket down, which ends the blocked read at once; the rest is the test's task getting a
        // CPU back. In a fresh-clone CI run the whole test took 1.4 s, its 1 s wait included; with a Swift build beside
        // the VM tests on two cores, the cancel alone took 3.3 s (and the server's start 1.5 s). URLSession, which
        // Kiln used before, took 150 s: the bound tells the two apart with room for such load.
        #expect(clock.now - cancelledAt < .seconds(10), "at once, with room for a loaded CI machine")
        #expect(error?.code == .cancelled, "\(String(describing: error))")
        #expect(error?.message.contains(uri) == true)
        #expect(folder.contents.isEmpty, "\(folder.contents)")
    }

    @Test func aCancelledFileCopyLeavesNothing() async throws {
        let folder = try Folder()
        defer { folder.remove() }
        let source = folder.path + "/source.bin"
        #expect(FileManager.default.createFile(atPath: source, contents: Data(count: 64 << 20)))
        let target = try Folder()
        defer { target.remove() }
        let download = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return await Self.fetchError("file://" + source, into: target)
        }
        let error = await download.value
        #expect(error?.code == .cancelled, "\(String(describing: error))")
        #expect(target.contents.isEmpty, "\(target.contents)")
    }

    @Test func anAnnouncedContentLengthAboveTheLimitIsRefusedBeforeTheBody() async throws {
        // The server announces 64 GiB and then sends nothing: a client reading the body would wait for ever.
        let server = try ScriptedHTTPServer { _, connection in
            guard connection.send("HTTP/1.1 200 OK\r\nContent-Length: 68719476736\r\nConnection: close\r\n\r\n") else { return }
            while connection.send([]) { Thread.sleep(forTimeInterval: 0.05) }
        }
        defer { server.stop() }
        let folder = try Folder()
        defer { folder.remove() }
        let uri = server.url("/huge.iso")
        let clock = ContinuousClock()
        let start = clock.now
        let error = await Self.fetchError(uri, into: folder)
        #expect(clock.now - start < .seconds(10))
        let message = error?.message ?? ""
        #expect(message.contains(uri), "\(message)")
        #expect(message.contains("\(Fetcher.defaultMaximumBytes) bytes"), "\(message)")
        #expect(message.contains("Content-Length 68719476736"), "\(message)")
        #expect(folder.contents.isEmpty, "\(folder.contents)")
    }

    @Test func aChunkedBodyIsCutOffWhenItPassesTheLimit() async throws {
        // Chunks of 4 KiB without end and without a length.
        let server = try ScriptedHTTPServer { _, connection in
            guard connection.send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n") else { return }
            let chunk = "1000\r\n" + String(repeating: "x", count: 4096) + "\r\n"
            while connection.send(chunk) {}
        }
        defer { server.stop() }
        let folder = try Folder()
        defer { folder.remove() }
        let uri = server.url("/endless")
        let error = await Self.fetchError(uri, into: folder, maximumBytes: 100_000)
        let message = error?.message ?? ""
        #expect(message.contains(uri), "\(message)")
        #expect(message.contains("limit of 100000 bytes"), "\(message)")
        #expect(message.contains("received ") && message.contains("cut off"), "how much arrived: \(message)")
        #expect(message.contains("KILN_MAX_DOWNLOAD_BYTES"), "\(message)")
        #expect(folder.contents.isEmpty, "\(folder.contents)")
    }

    @Test func theLimitComesFromTheEnvironment() throws {
        #expect(try Fetcher.maximumBytes(environment: [:]) == 16 << 30)
        #expect(try Fetcher.maximumBytes(environment: ["KILN_MAX_DOWNLOAD_BYTES": "500M"]) == 500 << 20)
        #expect(try Fetcher.maximumBytes(environment: ["KILN_MAX_DOWNLOAD_BYTES": "12345"]) == 12345)
        #expect(throws: KilnError.self) { try Fetcher.maximumBytes(environment: ["KILN_MAX_DOWNLOAD_BYTES": "lots"]) }
    }

    @Test func redirectsFromHTTPSDownToHTTPAreNotFollowed() throws {
        let secure = URL(string: "https://downloads.example/a.sh")
        let plain = URL(string: "http://mirror.example/a.sh")
        let problem = try #require(Fetcher.redirectProblem(from: secure, to: plain))
        #expect(problem.contains("https://downloads.example/a.sh") && problem.contains("http://mirror.example/a.sh"), "\(problem)")
        #expect(Fetcher.redirectProblem(from: secure, to: URL(string: "https://mirror.example/a.sh")) == nil)
        #expect(Fetcher.redirectProblem(from: plain, to: secure) == nil)
        #expect(Fetcher.redirectProblem(from: plain, to: URL(string: "http://other.example/b")) == nil)
        #expect(Fetcher.redirectProblem(from: secure, to: URL(string: "file:///etc/shadow")) != nil)
    }

    @Test func theDownloadAsksBeforeFollowingARedirect() async throws {
        // An http redirect is followed; one to a file:// location goes through the same check and is refused.
        let server = try ScriptedHTTPServer { request, connection in
            switch request.path {
            case "/moved": connection.send("HTTP/1.1 302 Found\r\nLocation: /script.sh\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            case "/to-file": connection.send("HTTP/1.1 302 Found\r\nLocation: file:///etc/passwd\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            default: connection.send("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
            }
        }
        defer { server.stop() }
        let folder = try Folder()
        defer { folder.remove() }
        let followed = try await Fetcher.fetch(server.url("/moved"), into: folder.path, name: "followed", maximumBytes: 1 << 20, environment: [:])
        #expect(followed.sizeBytes == 5)
        let error = await Self.fetchError(server.url("/to-file"), into: folder)
        let message = error?.message ?? ""
        #expect(message.contains("file:///etc/passwd") && message.contains("not followed"), "\(message)")
        #expect(folder.contents == ["followed"], "\(folder.contents)")
    }

    @Test func fileURIsReadRegularFilesOnly() async throws {
        let folder = try Folder()
        defer { folder.remove() }
        let target = try Folder()
        defer { target.remove() }
        let regular = folder.path + "/script.sh"
        #expect(FileManager.default.createFile(atPath: regular, contents: Data("echo ok\n".utf8)))
        let link = folder.path + "/link.sh"
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: regular)
        let fifo = folder.path + "/pipe"
        #expect(mkfifo(fifo, 0o600) == 0)

        #expect(try await Fetcher.fetch("file://" + regular, into: target.path, name: "a", maximumBytes: 1 << 20, environment: [:]).sizeBytes == 8)
        // A symbolic link is followed to what it names.
        #expect(try await Fetcher.fetch("file://" + link, into: target.path, name: "b", maximumBytes: 1 << 20, environment: [:]).sizeBytes == 8)

        let refusals: [(path: String, found: String)] = [
            (folder.path, "found a directory"),
            ("/dev/zero", "found a character device"),
            (fifo, "found a FIFO"),
            ("/proc/self/status", "procfs"),
        ]
        for refusal in refusals {
            let error = await Self.fetchError("file://" + refusal.path, into: target)
            let message = error?.message ?? ""
            #expect(message.contains(refusal.path) && message.contains(refusal.found), "\(refusal.path): \(message)")
        }
        let tooLarge = await Self.fetchError("file://" + regular, into: target, maximumBytes: 4)
        #expect(tooLarge?.message.contains("limit of 4 bytes") == true, "\(String(describing: tooLarge))")
        #expect(tooLarge?.message.contains("is 8 bytes") == true, "\(String(describing: tooLarge))")
        #expect(target.contents.sorted() == ["a", "b"], "\(target.contents)")
    }

    /// Over real TLS (socat in front of the scripted server, with a certificate made now for IP 127.0.0.1): an
    /// untrusted certificate is refused; trusted (OpenSSL's SSL_CERT_FILE), the download arrives, and a redirect from
    /// it down to http is refused without the http URL ever being asked.
    @Test func httpsVerifiesTheCertificateAndNeverRedirectsDownToHTTP() async throws {
        let plainHits = ScriptedHTTPServer.Counter()
        let plain = try ScriptedHTTPServer { _, connection in
            plainHits.increment()
            connection.send("HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nplain\n")
        }
        defer { plain.stop() }
        let plainURL = plain.url("/script.sh")
        let backend = try ScriptedHTTPServer { request, connection in
            if request.path == "/down" {
                connection.send("HTTP/1.1 302 Found\r\nLocation: \(plainURL)\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            } else {
                connection.send("HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nsecure\n")
            }
        }
        defer { backend.stop() }
        let tls = try await LoopbackTLS.start(forwardingTo: backend.port)
        defer { tls.stop() }
        let folder = try Folder()
        defer { folder.remove() }

        let untrusted = await Self.fetchError("https://127.0.0.1:\(tls.port)/script.sh", into: folder)
        #expect(untrusted?.message.contains("certificate not trusted") == true, "\(String(describing: untrusted))")
        #expect(untrusted?.message.contains("--insecure") == false, "a WinRM flag means nothing here")

        setenv("SSL_CERT_FILE", tls.certificatePath, 1)
        defer { unsetenv("SSL_CERT_FILE") }
        let fetched = try await Fetcher.fetch("https://127.0.0.1:\(tls.port)/script.sh", into: folder.path, name: "secure.sh", maximumBytes: 1 << 20, environment: [:])
        #expect(try String(contentsOfFile: fetched.localPath, encoding: .utf8) == "secure\n")

        let secureURL = "https://127.0.0.1:\(tls.port)/down"
        let down = await Self.fetchError(secureURL, into: folder)
        let message = down?.message ?? ""
        #expect(message.contains(secureURL) && message.contains(plainURL) && message.contains("from https down to http"), "\(message)")
        #expect(plainHits.value == 0, "the http URL was never asked")
        #expect(folder.contents == ["secure.sh"], "\(folder.contents)")
    }

    @Test func downloadsGoThroughTheProxyTheEnvironmentNames() async throws {
        let seen = ScriptedHTTPServer.Log()
        let proxy = try ScriptedHTTPServer { request, connection in
            seen.append(request.head)
            connection.send("HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nproxied\n")
        }
        defer { proxy.stop() }
        let folder = try Folder()
        defer { folder.remove() }
        // A host that resolves nowhere: only the proxy can answer for it.
        let environment = ["http_proxy": "http://kiln:p%40ss@127.0.0.1:\(proxy.port)"]
        let fetched = try await Fetcher.fetch("http://downloads.example.invalid:8080/a.sh?x=1", into: folder.path, name: "a.sh",
                                              maximumBytes: 1 << 20, environment: environment)
        #expect(try String(contentsOfFile: fetched.localPath, encoding: .utf8) == "proxied\n")
        let head = seen.entries.first ?? ""
        #expect(head.hasPrefix("GET http://downloads.example.invalid:8080/a.sh?x=1 HTTP/1.1\r\n"), "\(head)")
        #expect(head.contains("Proxy-Authorization: Basic \(Data("kiln:p@ss".utf8).base64EncodedString())"), "\(head)")

        // no_proxy sends a host direct: the proxy named is not even listening.
        let direct = try ScriptedHTTPServer { _, connection in
            connection.send("HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\ndirect\n")
        }
        defer { direct.stop() }
        let bypassed = try await Fetcher.fetch(direct.url("/b.sh"), into: folder.path, name: "b.sh", maximumBytes: 1 << 20,
                                               environment: ["http_proxy": "http://127.0.0.1:1", "no_proxy": "localhost,127.0.0.1"])
        #expect(try String(contentsOfFile: bypassed.localPath, encoding: .utf8) == "direct\n")
        #expect(seen.entries.count == 1)
    }

    @Test func httpsGoesThroughAProxyTunnel() async throws {
        let backend = try ScriptedHTTPServer { _, connection in
            connection.send("HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nsecure\n")
        }
        defer { backend.stop() }
        let tls = try await LoopbackTLS.start(forwardingTo: backend.port)
        defer { tls.stop() }
        let tlsPort = tls.port
        let seen = ScriptedHTTPServer.Log()
        let proxy = try ScriptedHTTPServer { request, connection in
            seen.append(request.head)
            if request.path == "127.0.0.1:\(tlsPort)" {
                guard connection.send("HTTP/1.1 200 Connection established\r\n\r\n") else { return }
                connection.splice(toPort: tlsPort)
            } else {
                connection.send("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            }
        }
        defer { proxy.stop() }
        let folder = try Folder()
        defer { folder.remove() }
        let environment = ["https_proxy": "127.0.0.1:\(proxy.port)"]
        // The tunnel carries TLS end to end: the certificate is still checked (and not trusted here).
        let untrusted = await Self.fetchError("https://127.0.0.1:\(tls.port)/s.sh", into: folder, environment: environment)
        #expect(untrusted?.message.contains("certificate not trusted") == true, "\(String(describing: untrusted))")
        #expect(seen.entries.first?.hasPrefix("CONNECT 127.0.0.1:\(tls.port) HTTP/1.1\r\n") == true, "\(seen.entries)")
        // A proxy that refuses the tunnel is named with its answer.
        let refused = await Self.fetchError("https://downloads.example.invalid/s.sh", into: folder, environment: environment)
        let message = refused?.message ?? ""
        #expect(message.contains("the proxy 127.0.0.1:\(proxy.port) refused a tunnel to downloads.example.invalid:443") && message.contains("403"), "\(message)")
    }

    @Test func proxySettingsAreReadAsCurlReadsThem() throws {
        #expect(try HTTPProxy.forTarget(host: "a.example", secure: true, environment: ["HTTPS_PROXY": "http://p:3128"]) == HTTPProxy(host: "p", port: 3128))
        #expect(try HTTPProxy.forTarget(host: "a.example", secure: false, environment: ["HTTP_PROXY": "http://p:3128"]) == nil,
                "HTTP_PROXY in capitals is not read (a CGI request header can set it)")
        #expect(try HTTPProxy.forTarget(host: "a.example", secure: false, environment: ["all_proxy": "p"]) == HTTPProxy(host: "p", port: 80))
        #expect(try HTTPProxy.forTarget(host: "deep.a.example", secure: true, environment: ["https_proxy": "p:1", "no_proxy": ".a.example"]) == nil)
        #expect(try HTTPProxy.forTarget(host: "a.example", secure: true, environment: ["https_proxy": "p:1", "NO_PROXY": "*"]) == nil)
        #expect(try HTTPProxy.forTarget(host: "nota.example", secure: true, environment: ["https_proxy": "p:1", "no_proxy": "a.example"]) != nil)
        #expect(throws: KilnError.self) { try HTTPProxy.forTarget(host: "a.example", secure: true, environment: ["https_proxy": "socks5://p:1080"]) }
    }

}
