import CKilnShim
import Crypto
import Foundation
import KilnSupport

/// The hash and cipher primitives NTLM (MS-NLMP) is built from.
public enum NTLMCrypto {
    public static func md4(_ data: [UInt8]) -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: 16)
        kiln_md4(data, data.count, &digest)
        return digest
    }

    public static func md5(_ data: [UInt8]) -> [UInt8] {
        Array(Insecure.MD5.hash(data: data))
    }

    public static func hmacMD5(key: [UInt8], _ parts: [UInt8]...) -> [UInt8] {
        var mac = HMAC<Insecure.MD5>(key: SymmetricKey(data: key))
        for part in parts { mac.update(data: part) }
        return Array(mac.finalize())
    }

    public static func utf16le(_ text: String) -> [UInt8] {
        text.utf16.flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] }
    }

    /// NTOWFv1: MD4 of the UTF-16LE password (the "NT hash").
    public static func ntHash(password: String) -> [UInt8] {
        md4(utf16le(password))
    }

    /// NTOWFv2 (MS-NLMP 3.3.2): HMAC-MD5 keyed by the NT hash over the upper-cased user name and the domain.
    public static func ntowfv2(ntHash: [UInt8], user: String, domain: String) -> [UInt8] {
        hmacMD5(key: ntHash, utf16le(user.uppercased() + domain))
    }

    /// RC4 applied once with a fresh key (the encrypted random session key).
    public static func rc4(key: [UInt8], _ data: [UInt8]) -> [UInt8] {
        RC4Stream(key: key).apply(data)
    }
}

/// An RC4 key stream that continues across calls, as NTLM's sealing handles do.
public final class RC4Stream: @unchecked Sendable {
    private let state: OpaquePointer

    public init(key: [UInt8]) {
        guard let state = kiln_rc4_new(key, Int32(key.count)) else { fatalError("out of memory") }
        self.state = state
    }

    public func apply(_ data: [UInt8]) -> [UInt8] {
        guard !data.isEmpty else { return [] }
        var output = [UInt8](repeating: 0, count: data.count)
        kiln_rc4_apply(state, data, &output, data.count)
        return output
    }

    deinit { kiln_rc4_free(state) }
}

/// NEGOTIATE_MESSAGE flags (MS-NLMP 2.2.2.5).
public struct NTLMFlags: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let unicode = NTLMFlags(rawValue: 0x0000_0001)
    public static let requestTarget = NTLMFlags(rawValue: 0x0000_0004)
    public static let sign = NTLMFlags(rawValue: 0x0000_0010)
    public static let seal = NTLMFlags(rawValue: 0x0000_0020)
    public static let ntlm = NTLMFlags(rawValue: 0x0000_0200)
    public static let alwaysSign = NTLMFlags(rawValue: 0x0000_8000)
    public static let targetTypeDomain = NTLMFlags(rawValue: 0x0001_0000)
    public static let targetTypeServer = NTLMFlags(rawValue: 0x0002_0000)
    public static let extendedSessionSecurity = NTLMFlags(rawValue: 0x0008_0000)
    public static let targetInfo = NTLMFlags(rawValue: 0x0080_0000)
    public static let version = NTLMFlags(rawValue: 0x0200_0000)
    public static let key128 = NTLMFlags(rawValue: 0x2000_0000)
    public static let keyExchange = NTLMFlags(rawValue: 0x4000_0000)
    public static let key56 = NTLMFlags(rawValue: 0x8000_0000)

    /// What Kiln asks for: NTLMv2 with extended session security, 128-bit key exchange, signing and sealing
    /// (what WinRM message encryption needs).
    public static let client: NTLMFlags = [.unicode, .requestTarget, .sign, .seal, .ntlm, .alwaysSign, .extendedSessionSecurity,
                                           .targetInfo, .version, .key128, .keyExchange, .key56]
}

/// AV_PAIR identifiers (MS-NLMP 2.2.2.1).
public enum NTLMAttribute: UInt16, Sendable {
    case end = 0
    case nbComputerName = 1
    case nbDomainName = 2
    case dnsComputerName = 3
    case dnsDomainName = 4
    case dnsTreeName = 5
    case flags = 6
    case timestamp = 7
    case singleHost = 8
    case targetName = 9
    case channelBindings = 10
}

/// Little-endian reading and writing of NTLM message fields.
enum NTLMWire {
    static let signature: [UInt8] = Array("NTLMSSP".utf8) + [0]

    static func u16(_ value: UInt16) -> [UInt8] { [UInt8(value & 0xFF), UInt8(value >> 8)] }
    static func u32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8((value >> (8 * $0)) & 0xFF) } }
    static func u64(_ value: UInt64) -> [UInt8] { (0..<8).map { UInt8((value >> (8 * $0)) & 0xFF) } }

    static func readU16(_ bytes: [UInt8], _ at: Int) -> UInt16 { UInt16(bytes[at]) | UInt16(bytes[at + 1]) << 8 }
    static func readU32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
        (0..<4).reduce(0) { $0 | UInt32(bytes[at + $1]) << (8 * UInt32($1)) }
    }

    /// A (length, maximum length, offset) field and its payload.
    static func field(_ bytes: [UInt8], at: Int, what: String) throws(KilnError) -> [UInt8] {
        guard bytes.count >= at + 8 else { throw KilnError(.external, "NTLM message too short for its \(what) field") }
        let length = Int(readU16(bytes, at))
        let offset = Int(readU32(bytes, at + 4))
        guard length == 0 || (offset >= 0 && offset + length <= bytes.count) else {
            throw KilnError(.external, "NTLM \(what) field points outside the message (offset \(offset), length \(length), message \(bytes.count) bytes)")
        }
        return length == 0 ? [] : Array(bytes[offset..<offset + length])
    }

    static func attributes(_ bytes: [UInt8]) throws(KilnError) -> [(id: UInt16, value: [UInt8])] {
        var pairs: [(UInt16, [UInt8])] = []
        var at = 0
        while at + 4 <= bytes.count {
            let id = readU16(bytes, at)
            let length = Int(readU16(bytes, at + 2))
            guard at + 4 + length <= bytes.count else { throw KilnError(.external, "NTLM target information is truncated") }
            if id == NTLMAttribute.end.rawValue { return pairs }
            pairs.append((id, Array(bytes[at + 4..<at + 4 + length])))
            at += 4 + length
        }
        throw KilnError(.external, "NTLM target information has no end marker")
    }

    static func encode(attributes: [(id: UInt16, value: [UInt8])]) -> [UInt8] {
        var bytes: [UInt8] = []
        for (id, value) in attributes { bytes += u16(id) + u16(UInt16(value.count)) + value }
        return bytes + [0, 0, 0, 0]
    }

    /// Windows 6.1 build 7601, NTLM revision 15: the version block clients send for debugging only.
    static let version: [UInt8] = [6, 1, 0xB1, 0x1D, 0, 0, 0, 15]
}

/// A parsed CHALLENGE_MESSAGE (MS-NLMP 2.2.1.2).
public struct NTLMChallenge: Sendable {
    public var flags: NTLMFlags
    public var serverChallenge: [UInt8]
    public var targetInfo: [UInt8]

    public init(_ bytes: [UInt8]) throws(KilnError) {
        guard bytes.count >= 32, Array(bytes[0..<8]) == NTLMWire.signature, NTLMWire.readU32(bytes, 8) == 2 else {
            throw KilnError(.external, "expected an NTLM CHALLENGE_MESSAGE from the server, found \(bytes.count) bytes that are not one")
        }
        flags = NTLMFlags(rawValue: NTLMWire.readU32(bytes, 20))
        serverChallenge = Array(bytes[24..<32])
        targetInfo = bytes.count >= 48 ? try NTLMWire.field(bytes, at: 40, what: "TargetInfo") : []
    }
}

/// The client side of an NTLMv2 exchange: NEGOTIATE, then AUTHENTICATE for the server's CHALLENGE, which yields
/// the session keys for signing and sealing.
public struct NTLMClient: Sendable {
    public let user: String
    public let domain: String
    let password: String
    public private(set) var negotiate: [UInt8] = []

    /// `DOMAIN\user` names the domain; `user` or `user@domain` is passed as is with an empty domain (a local account,
    /// or a UPN, which Windows resolves).
    public init(username: String, password: String) {
        if let slash = username.firstIndex(of: "\\") {
            domain = String(username[..<slash])
            user = String(username[username.index(after: slash)...])
        } else {
            domain = ""
            user = username
        }
        self.password = password
    }

    public mutating func negotiateMessage() -> [UInt8] {
        // Domain and workstation are not supplied; their fields point at the end of the fixed part.
        let empty = NTLMWire.u16(0) + NTLMWire.u16(0) + NTLMWire.u32(40)
        negotiate = NTLMWire.signature + NTLMWire.u32(1) + NTLMWire.u32(NTLMFlags.client.rawValue) + empty + empty + NTLMWire.version
        return negotiate
    }

    /// The AUTHENTICATE_MESSAGE for `challengeBytes` and the session it establishes. The random inputs can be
    /// fixed for tests (MS-NLMP 4.2.4).
    public func authenticate(challengeBytes: [UInt8], clientChallenge: [UInt8]? = nil, exportedSessionKey: [UInt8]? = nil,
                             now: Date = Date()) throws(KilnError) -> (message: [UInt8], session: NTLMSessionSecurity) {
        let challenge = try NTLMChallenge(challengeBytes)
        guard challenge.flags.contains(.extendedSessionSecurity) || challenge.flags.contains(.ntlm) else {
            throw KilnError(.external, "the server offered no NTLM variant Kiln speaks (flags \(String(challenge.flags.rawValue, radix: 16)))")
        }
        let flags = NTLMFlags(rawValue: NTLMFlags.client.rawValue & challenge.flags.rawValue).union(.unicode)
        var attributes = try NTLMWire.attributes(challenge.targetInfo)
        let serverTimestamp = attributes.first { $0.id == NTLMAttribute.timestamp.rawValue }?.value
        let timestamp = serverTimestamp ?? NTLMWire.u64(UInt64(max(0, (now.timeIntervalSince1970 + 11_644_473_600) * 10_000_000)))
        // A server that sends a timestamp expects a MIC, and the flag that says one is present.
        if serverTimestamp != nil {
            if let index = attributes.firstIndex(where: { $0.id == NTLMAttribute.flags.rawValue }) {
                let value = NTLMWire.readU32(attributes[index].value + [0, 0, 0, 0], 0) | 0x2
                attributes[index].value = NTLMWire.u32(value)
            } else {
                attributes.append((NTLMAttribute.flags.rawValue, NTLMWire.u32(0x2)))
            }
        }
        let clientChallenge = clientChallenge ?? (0..<8).map { _ in UInt8.random(in: 0...255) }
        let key = NTLMCrypto.ntowfv2(ntHash: NTLMCrypto.ntHash(password: password), user: user, domain: domain)
        let temp: [UInt8] = [1, 1, 0, 0, 0, 0, 0, 0] + timestamp + clientChallenge + [0, 0, 0, 0]
            + NTLMWire.encode(attributes: attributes) + [0, 0, 0, 0]
        let proof = NTLMCrypto.hmacMD5(key: key, challenge.serverChallenge, temp)
        let ntResponse = proof + temp
        let lmResponse = serverTimestamp != nil ? [UInt8](repeating: 0, count: 24)
                                                : NTLMCrypto.hmacMD5(key: key, challenge.serverChallenge, clientChallenge) + clientChallenge
        let sessionBaseKey = NTLMCrypto.hmacMD5(key: key, proof)
        let exported: [UInt8]
        let encryptedKey: [UInt8]
        if flags.contains(.keyExchange) {
            exported = exportedSessionKey ?? (0..<16).map { _ in UInt8.random(in: 0...255) }
            encryptedKey = NTLMCrypto.rc4(key: sessionBaseKey, exported)
        } else {
            exported = sessionBaseKey
            encryptedKey = []
        }

        let domainBytes = NTLMCrypto.utf16le(domain)
        let userBytes = NTLMCrypto.utf16le(user)
        let workstation = NTLMCrypto.utf16le("KILN")
        let fixedLength = 88
        var payload: [UInt8] = []
        func field(_ value: [UInt8]) -> [UInt8] {
            let offset = fixedLength + payload.count
            payload += value
            return NTLMWire.u16(UInt16(value.count)) + NTLMWire.u16(UInt16(value.count)) + NTLMWire.u32(UInt32(offset))
        }
        var message = NTLMWire.signature + NTLMWire.u32(3)
        message += field(lmResponse)
        message += field(ntResponse)
        message += field(domainBytes)
        message += field(userBytes)
        message += field(workstation)
        message += field(encryptedKey)
        message += NTLMWire.u32(flags.rawValue) + NTLMWire.version + [UInt8](repeating: 0, count: 16)
        message += payload
        if serverTimestamp != nil {
            let mic = NTLMCrypto.hmacMD5(key: exported, negotiate, challengeBytes, message)
            message.replaceSubrange(72..<88, with: mic)
        }
        return (message, NTLMSessionSecurity(exportedSessionKey: exported, flags: flags, isInitiator: true))
    }
}

/// Signing and sealing with the keys an NTLM exchange established (MS-NLMP 3.4, extended session security).
/// Each direction has its own RC4 stream and sequence number; a message out of order fails verification.
public final class NTLMSessionSecurity: @unchecked Sendable {
    private let signKey: [UInt8]
    private let verifyKey: [UInt8]
    private let sealHandle: RC4Stream
    private let unsealHandle: RC4Stream
    private let keyExchange: Bool
    private var sendSequence: UInt32 = 0
    private var receiveSequence: UInt32 = 0
    private let lock = NSLock()

    public init(exportedSessionKey key: [UInt8], flags: NTLMFlags, isInitiator: Bool) {
        func derive(_ constant: String) -> [UInt8] { NTLMCrypto.md5(key + Array(constant.utf8) + [0]) }
        let clientSign = derive("session key to client-to-server signing key magic constant")
        let serverSign = derive("session key to server-to-client signing key magic constant")
        let truncated = flags.contains(.key128) ? key : flags.contains(.key56) ? Array(key.prefix(7)) : Array(key.prefix(5))
        let clientSeal = NTLMCrypto.md5(truncated + Array("session key to client-to-server sealing key magic constant".utf8) + [0])
        let serverSeal = NTLMCrypto.md5(truncated + Array("session key to server-to-client sealing key magic constant".utf8) + [0])
        signKey = isInitiator ? clientSign : serverSign
        verifyKey = isInitiator ? serverSign : clientSign
        sealHandle = RC4Stream(key: isInitiator ? clientSeal : serverSeal)
        unsealHandle = RC4Stream(key: isInitiator ? serverSeal : clientSeal)
        keyExchange = flags.contains(.keyExchange)
    }

    /// Encrypts `message`; returns the sealed bytes and the 16-byte signature.
    public func seal(_ message: [UInt8]) -> (sealed: [UInt8], signature: [UInt8]) {
        lock.lock()
        defer { lock.unlock() }
        let sealed = sealHandle.apply(message)
        let sequence = NTLMWire.u32(sendSequence)
        let mac = Array(NTLMCrypto.hmacMD5(key: signKey, sequence, message).prefix(8))
        let checksum = keyExchange ? sealHandle.apply(mac) : mac
        sendSequence &+= 1
        return (sealed, [1, 0, 0, 0] + checksum + sequence)
    }

    /// Decrypts a sealed message from the peer and checks its signature.
    public func unseal(_ sealed: [UInt8], signature: [UInt8]) throws(KilnError) -> [UInt8] {
        lock.lock()
        defer { lock.unlock() }
        guard signature.count == 16, signature[0..<4] == [1, 0, 0, 0] else {
            throw KilnError(.external, "NTLM: the message signature is not a version 1 signature")
        }
        let message = unsealHandle.apply(sealed)
        let sequence = NTLMWire.u32(receiveSequence)
        let mac = Array(NTLMCrypto.hmacMD5(key: verifyKey, sequence, message).prefix(8))
        let checksum = keyExchange ? unsealHandle.apply(mac) : mac
        receiveSequence &+= 1
        guard Array(signature[4..<12]) == checksum, Array(signature[12..<16]) == sequence else {
            throw KilnError(.external, "NTLM: the message signature does not verify (tampered, out of order, or wrong keys)")
        }
        return message
    }
}
