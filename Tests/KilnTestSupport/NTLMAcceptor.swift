import Foundation
import KilnWinRM

/// The server side of NTLMv2 for the WinRM test server: issues a CHALLENGE (with a timestamp, so clients must send
/// a MIC), verifies the AUTHENTICATE message's NTProofStr and MIC against known passwords, and recovers the
/// exported session key. Message fields are read here independently of the client's encoder.
public final class NTLMAcceptor: @unchecked Sendable {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    let passwords: [String: String]
    private var negotiate: [UInt8] = []
    private var challenge: [UInt8] = []
    private var serverChallenge: [UInt8] = []
    public private(set) var authenticatedUser: String?

    /// `passwords`: user name (case-insensitive) → password.
    public init(passwords: [String: String]) {
        self.passwords = Dictionary(uniqueKeysWithValues: passwords.map { ($0.key.lowercased(), $0.value) })
    }

    static func le16(_ value: Int) -> [UInt8] { [UInt8(value & 0xFF), UInt8((value >> 8) & 0xFF)] }
    static func le32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8((value >> (8 * UInt32($0))) & 0xFF) } }
    static func read16(_ bytes: [UInt8], _ at: Int) -> Int { Int(bytes[at]) | Int(bytes[at + 1]) << 8 }
    static func read32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
        UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
    }

    static func utf16(_ text: String) -> [UInt8] { text.utf16.flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] } }

    /// A CHALLENGE_MESSAGE: `flags`, an 8-byte challenge, the target name and target information.
    public static func challengeMessage(flags: UInt32, serverChallenge: [UInt8], targetName: String, targetInfo: [UInt8]) -> [UInt8] {
        let name = utf16(targetName)
        let nameOffset = 56
        let infoOffset = nameOffset + name.count
        var message = Array("NTLMSSP".utf8) + [0] + le32(2)
        message += le16(name.count) + le16(name.count) + le32(UInt32(nameOffset))
        message += le32(flags) + serverChallenge + [UInt8](repeating: 0, count: 8)
        message += le16(targetInfo.count) + le16(targetInfo.count) + le32(UInt32(infoOffset))
        message += [10, 0, 0x63, 0x45, 0, 0, 0, 15]
        return message + name + targetInfo
    }

    public static func pair(_ id: UInt16, _ value: [UInt8]) -> [UInt8] {
        le16(Int(id)) + le16(value.count) + value
    }

    public func challenge(for negotiate: [UInt8]) throws -> [UInt8] {
        guard negotiate.count >= 16, Array(negotiate[0..<8]) == Array("NTLMSSP".utf8) + [0], Self.read32(negotiate, 8) == 1 else {
            throw Failure(description: "not a NEGOTIATE_MESSAGE")
        }
        self.negotiate = negotiate
        serverChallenge = (0..<8).map { _ in UInt8.random(in: 0...255) }
        let filetime = UInt64((Date().timeIntervalSince1970 + 11_644_473_600) * 10_000_000)
        let info = Self.pair(2, Self.utf16("KILNTEST")) + Self.pair(1, Self.utf16("WINRMTEST"))
            + Self.pair(4, Self.utf16("kiln.test")) + Self.pair(3, Self.utf16("winrmtest.kiln.test"))
            + Self.pair(7, (0..<8).map { UInt8((filetime >> (8 * UInt64($0))) & 0xFF) }) + [0, 0, 0, 0]
        let clientFlags = Self.read32(negotiate, 12)
        let flags = (clientFlags & 0xE2088235) | 0x0081_0000 | 0x0080_0000 | 0x0000_0001
        challenge = Self.challengeMessage(flags: flags, serverChallenge: serverChallenge, targetName: "KILNTEST", targetInfo: info)
        return challenge
    }

    /// Verifies an AUTHENTICATE_MESSAGE; returns the server's session security.
    public func accept(_ message: [UInt8]) throws -> NTLMSessionSecurity {
        guard message.count >= 88, Array(message[0..<8]) == Array("NTLMSSP".utf8) + [0], Self.read32(message, 8) == 3 else {
            throw Failure(description: "not an AUTHENTICATE_MESSAGE")
        }
        func field(_ at: Int) throws -> [UInt8] {
            let length = Self.read16(message, at)
            let offset = Int(Self.read32(message, at + 4))
            guard offset + length <= message.count else { throw Failure(description: "field at \(at) out of bounds") }
            return Array(message[offset..<offset + length])
        }
        let nt = try field(20)
        func text(_ bytes: [UInt8]) -> String {
            String(decoding: stride(from: 0, to: bytes.count - 1, by: 2).map { UInt16(bytes[$0]) | UInt16(bytes[$0 + 1]) << 8 }, as: UTF16.self)
        }
        let domain = text(try field(28))
        let user = text(try field(36))
        let encryptedKey = try field(52)
        let flags = NTLMFlags(rawValue: Self.read32(message, 60))
        guard let password = passwords[user.lowercased()] else { throw Failure(description: "unknown user \(user)") }
        guard nt.count > 48 else { throw Failure(description: "not an NTLMv2 response (\(nt.count) bytes)") }
        let key = NTLMCrypto.ntowfv2(ntHash: NTLMCrypto.ntHash(password: password), user: user, domain: domain)
        let blob = Array(nt[16...])
        let proof = NTLMCrypto.hmacMD5(key: key, serverChallenge, blob)
        guard proof == Array(nt[0..<16]) else { throw Failure(description: "wrong password for \(user)") }
        let baseKey = NTLMCrypto.hmacMD5(key: key, proof)
        let exported = flags.contains(.keyExchange) ? NTLMCrypto.rc4(key: baseKey, encryptedKey) : baseKey
        // The blob's target information must carry MsvAvFlags with the MIC bit, and the MIC must verify.
        var at = 28
        var micFlagged = false
        while at + 4 <= blob.count {
            let id = Self.read16(blob, at)
            let length = Self.read16(blob, at + 2)
            if id == 0 { break }
            if id == 6, length == 4, Self.read32(blob, at + 4) & 0x2 != 0 { micFlagged = true }
            at += 4 + length
        }
        guard micFlagged else { throw Failure(description: "the response does not flag a MIC although the challenge had a timestamp") }
        var zeroed = message
        zeroed.replaceSubrange(72..<88, with: [UInt8](repeating: 0, count: 16))
        let mic = NTLMCrypto.hmacMD5(key: exported, negotiate, challenge, zeroed)
        guard mic == Array(message[72..<88]) else { throw Failure(description: "the MIC does not verify") }
        authenticatedUser = user
        return NTLMSessionSecurity(exportedSessionKey: exported, flags: flags, isInitiator: false)
    }
}
