import Foundation
import KilnTestSupport
import Testing
@testable import KilnWinRM

func hex(_ text: String) -> [UInt8] {
    var bytes: [UInt8] = []
    var index = text.startIndex
    while index < text.endIndex {
        let next = text.index(index, offsetBy: 2)
        bytes.append(UInt8(text[index..<next], radix: 16)!)
        index = next
    }
    return bytes
}

func hexString(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

/// The worked example of MS-NLMP 4.2.4 (NTLMv2): published values, not ones this code produced.
@Suite struct NTLMTests {
    static let flags: UInt32 = 0xE28A_8233
    static let targetInfo = NTLMAcceptor.pair(2, Array("Domain".utf16.flatMap { [UInt8($0), 0] }))
        + NTLMAcceptor.pair(1, Array("Server".utf16.flatMap { [UInt8($0), 0] })) + [0, 0, 0, 0]

    @Test func hashes() {
        #expect(hexString(NTLMCrypto.ntHash(password: "Password")) == "a4f49c406510bdcab6824ee7c30fd852")
        #expect(hexString(NTLMCrypto.ntowfv2(ntHash: NTLMCrypto.ntHash(password: "Password"), user: "User", domain: "Domain"))
                == "0c868a403bfd7a93a3001ef22ef02e3f")
    }

    @Test func authenticateMessageMatchesTheSpecification() throws {
        let challenge = NTLMAcceptor.challengeMessage(flags: Self.flags, serverChallenge: hex("0123456789abcdef"), targetName: "Server",
                                                      targetInfo: Self.targetInfo)
        var client = NTLMClient(username: "Domain\\User", password: "Password")
        _ = client.negotiateMessage()
        let (message, session) = try client.authenticate(challengeBytes: challenge, clientChallenge: hex("aaaaaaaaaaaaaaaa"),
                                                         exportedSessionKey: [UInt8](repeating: 0x55, count: 16),
                                                         now: Date(timeIntervalSince1970: -11_644_473_600))
        func field(_ at: Int) -> [UInt8] {
            let length = Int(message[at]) | Int(message[at + 1]) << 8
            let offset = Int(message[at + 4]) | Int(message[at + 5]) << 8
            return Array(message[offset..<offset + length])
        }
        // 4.2.4.2.1 LMv2 response, 4.2.4.2.2 NTProofStr and the whole NTLMv2 response, 4.2.4.2.3 encrypted session key.
        #expect(hexString(field(12)) == "86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa")
        #expect(hexString(field(20)) == "68cd0ab851e51c96aabc927bebef6a1c" + "0101000000000000" + "0000000000000000" + "aaaaaaaaaaaaaaaa"
                + "00000000" + "02000c0044006f006d00610069006e0001000c0053006500720076006500720000000000" + "00000000")
        #expect(hexString(field(52)) == "c5dad2544fc9799094ce1ce90bc9d03e")
        #expect(field(36) == Array("User".utf16.flatMap { [UInt8($0), 0] }))
        #expect(field(28) == Array("Domain".utf16.flatMap { [UInt8($0), 0] }))

        // 4.2.4.4: the client seals "Plaintext" (UTF-16LE) with sequence number 0.
        let plaintext = hex("50006c00610069006e007400650078007400")
        let (sealed, signature) = session.seal(plaintext)
        #expect(hexString(sealed) == "54e50165bf1936dc996020c1811b0f06fb5f")
        #expect(hexString(signature) == "010000007fb38ec5c55d497600000000")
    }

    @Test func serverDirectionMatchesTheSpecification() throws {
        let server = NTLMSessionSecurity(exportedSessionKey: [UInt8](repeating: 0x55, count: 16), flags: NTLMFlags(rawValue: Self.flags), isInitiator: false)
        let (sealed, signature) = server.seal(hex("50006c00610069006e007400650078007400"))
        #expect(hexString(sealed) == "160871b730ba74e946c453d7465b54278dd0")
        #expect(hexString(signature) == "01000000b298b847ce7c580700000000")
        let client = NTLMSessionSecurity(exportedSessionKey: [UInt8](repeating: 0x55, count: 16), flags: NTLMFlags(rawValue: Self.flags), isInitiator: true)
        #expect(try client.unseal(sealed, signature: signature) == hex("50006c00610069006e007400650078007400"))
    }

    @Test func sequenceAndTamperingAreDetected() throws {
        let key = (0..<16).map { UInt8($0) }
        let client = NTLMSessionSecurity(exportedSessionKey: key, flags: NTLMFlags.client, isInitiator: true)
        let server = NTLMSessionSecurity(exportedSessionKey: key, flags: NTLMFlags.client, isInitiator: false)
        for round in 0..<3 {
            let message = Array("message \(round) ✓".utf8)
            let (sealed, signature) = client.seal(message)
            #expect(try server.unseal(sealed, signature: signature) == message)
            let (back, backSignature) = server.seal(message.reversed())
            #expect(try client.unseal(back, signature: backSignature) == message.reversed())
        }
        var (sealed, signature) = client.seal(Array("payload".utf8))
        sealed[0] ^= 1
        #expect(throws: (any Error).self) { try server.unseal(sealed, signature: signature) }
        // Skipping a message breaks the sequence.
        let fresh = NTLMSessionSecurity(exportedSessionKey: key, flags: NTLMFlags.client, isInitiator: false)
        _ = client.seal(Array("skipped".utf8))
        (sealed, signature) = client.seal(Array("late".utf8))
        #expect(throws: (any Error).self) { try fresh.unseal(sealed, signature: signature) }
    }

    @Test func acceptorVerifiesProofAndMIC() throws {
        let acceptor = NTLMAcceptor(passwords: ["Administrator": "S3cret$'\"ü"])
        var client = NTLMClient(username: "Administrator", password: "S3cret$'\"ü")
        let challenge = try acceptor.challenge(for: client.negotiateMessage())
        let (message, session) = try client.authenticate(challengeBytes: challenge)
        let server = try acceptor.accept(message)
        let (sealed, signature) = session.seal(Array("hello".utf8))
        #expect(try server.unseal(sealed, signature: signature) == Array("hello".utf8))

        var wrong = NTLMClient(username: "Administrator", password: "wrong")
        let otherAcceptor = NTLMAcceptor(passwords: ["Administrator": "S3cret$'\"ü"])
        let otherChallenge = try otherAcceptor.challenge(for: wrong.negotiateMessage())
        #expect(throws: (any Error).self) { try otherAcceptor.accept(try wrong.authenticate(challengeBytes: otherChallenge).message) }

        // A changed byte in the signed messages fails the MIC.
        var tampered = NTLMClient(username: "Administrator", password: "S3cret$'\"ü")
        let third = NTLMAcceptor(passwords: ["Administrator": "S3cret$'\"ü"])
        let thirdChallenge = try third.challenge(for: tampered.negotiateMessage())
        var bad = try tampered.authenticate(challengeBytes: thirdChallenge).message
        bad[64] ^= 0xFF
        #expect(throws: (any Error).self) { try third.accept(bad) }
    }
}
