import Foundation
import KilnSupport
import KilnTestSupport
import Testing
@testable import KilnWinRM

/// The WinRM client's HTTP reader against replies no WinRM service should send: a negative, non-numeric or huge
/// Content-Length or chunk size, a body past the limit, a head that never ends; and envelopes nested 100,000 deep or
/// carrying a DTD's entities. Each is an error naming what was wrong; none crashes or reads without bound.
@Suite("WinRM HTTP replies are bounded")
struct HTTPReplyLimitTests {
    /// Sends `reply` (raw bytes) to the first request, then `tail` until the client goes away.
    static func server(_ reply: String, tail: [UInt8] = []) throws -> ScriptedHTTPServer {
        try ScriptedHTTPServer { _, connection in
            guard connection.send(reply) else { return }
            if tail.isEmpty {
                // Hold the connection open: a client waiting for a body that never comes would hang here.
                while connection.send([]) { Thread.sleep(forTimeInterval: 0.05) }
            } else {
                while connection.send(tail) {}
            }
        }
    }

    static func roundTripError(_ server: ScriptedHTTPServer, maximumBodyBytes: Int? = nil) throws -> KilnError? {
        let connection = HTTPConnection(endpoint: WinRMEndpoint(secure: false, host: "127.0.0.1", port: server.port), verifyCertificate: false)
        if let maximumBodyBytes { connection.maximumBodyBytes = maximumBodyBytes }
        defer { connection.close() }
        try connection.open()
        do {
            _ = try connection.roundTrip(headers: [], body: Array("<s:Envelope/>".utf8), readTimeout: .seconds(10))
            return nil
        } catch {
            return error
        }
    }

    @Test(arguments: [
        ("Content-Length: -5", "Content-Length \"-5\""),
        ("Content-Length: +5", "Content-Length \"+5\""),
        ("Content-Length: 12abc", "Content-Length \"12abc\""),
        ("Content-Length: 99999999999999999999999999", "99999999999999999999999999 bytes"),
        ("Content-Length: 1099511627776", "1099511627776 bytes"),
    ])
    func badContentLengths(header: String, shown: String) throws {
        let server = try Self.server("HTTP/1.1 200 OK\r\n\(header)\r\n\r\n")
        defer { server.stop() }
        let clock = ContinuousClock()
        let start = clock.now
        let error = try #require(try Self.roundTripError(server))
        #expect(clock.now - start < .seconds(5), "refused before any body is read")
        #expect(error.message.contains("127.0.0.1:\(server.port)"), "\(error)")
        #expect(error.message.contains(shown), "\(error)")
    }

    @Test(arguments: [
        ("-5", "bad chunk size \"-5\""),
        ("", "bad chunk size \"\""),
        ("zz", "bad chunk size \"zz\""),
        ("7fffffffffffffff", "chunk of 0x7fffffffffffffff bytes"),
        ("ffffffffffffffffffff", "chunk of 0xffffffffffffffffffff bytes"),
    ])
    func badChunkSizes(size: String, shown: String) throws {
        let server = try Self.server("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\(size)\r\n")
        defer { server.stop() }
        let error = try #require(try Self.roundTripError(server))
        #expect(error.message.contains(shown), "\(error)")
    }

    @Test func aChunkedBodyPastTheLimitIsCutOff() throws {
        let chunk = Array(("1000\r\n" + String(repeating: "x", count: 4096) + "\r\n").utf8)
        let server = try Self.server("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", tail: chunk)
        defer { server.stop() }
        let error = try #require(try Self.roundTripError(server, maximumBodyBytes: 1 << 20))
        #expect(error.message.contains("at most 1048576 bytes"), "\(error)")
        #expect(error.message.contains("after 1048576 bytes of body"), "\(error)")
    }

    @Test func aBodyReadToTheEndPastTheLimitIsCutOff() throws {
        let server = try Self.server("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", tail: [UInt8](repeating: 0x78, count: 65536))
        defer { server.stop() }
        let error = try #require(try Self.roundTripError(server, maximumBodyBytes: 1 << 20))
        #expect(error.message.contains("more than 1048576 bytes"), "\(error)")
    }

    @Test func aHeadThatNeverEndsIsCutOff() throws {
        let server = try Self.server("HTTP/1.1 200 OK\r\n", tail: Array("X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".utf8))
        defer { server.stop() }
        let error = try #require(try Self.roundTripError(server))
        #expect(error.message.contains("status line and headers"), "\(error)")
    }

    @Test func anHonestReplyStillReads() throws {
        let body = "<s:Envelope>ok</s:Envelope>"
        let server = try Self.server("HTTP/1.1 200 OK\r\nContent-Length: \(body.utf8.count)\r\n\r\n" + body)
        defer { server.stop() }
        let connection = HTTPConnection(endpoint: WinRMEndpoint(secure: false, host: "127.0.0.1", port: server.port), verifyCertificate: false)
        defer { connection.close() }
        try connection.open()
        let response = try connection.roundTrip(headers: [], body: [], readTimeout: .seconds(10))
        #expect(response.status == 200)
        #expect(String(decoding: response.body, as: UTF8.self) == body)
    }

    @Test func deeplyNestedXMLIsAnError() throws {
        let depth = 100_000
        let nested = String(repeating: "<a>", count: depth) + String(repeating: "</a>", count: depth)
        let error = #expect(throws: KilnError.self) { try XMLElementNode.parse(Array(nested.utf8)) }
        #expect(error?.message.contains("more than \(XMLElementNode.maximumDepth) levels deep") == true, "\(String(describing: error))")
        // An envelope as deep as the limit still parses.
        let deepest = String(repeating: "<a>", count: XMLElementNode.maximumDepth) + String(repeating: "</a>", count: XMLElementNode.maximumDepth)
        #expect(try XMLElementNode.parse(Array(deepest.utf8)).name == "a")
    }

    @Test func entityHeavyXMLIsAnError() throws {
        // Entities that double at each level: a billion characters from a few hundred bytes.
        var entities = "<!DOCTYPE r [<!ENTITY e0 \"xxxxxxxxxx\">"
        for level in 1...9 { entities += "<!ENTITY e\(level) \"" + String(repeating: "&e\(level - 1);", count: 10) + "\">" }
        entities += "]><r>&e9;</r>"
        let error = #expect(throws: KilnError.self) { try XMLElementNode.parse(Array(entities.utf8)) }
        #expect(error?.message.contains("a document type declaration at byte 0") == true, "\(String(describing: error))")
    }
}
