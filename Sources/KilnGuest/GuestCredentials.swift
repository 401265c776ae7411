import Crypto
import Foundation
import KilnSupport

/// A fresh ed25519 key for one build: the private half authenticates Kiln, the public half goes into the guest.
/// The builder puts the public half in the guest and keeps the key with a checkpoint; the SSH communicator signs with it.
public struct SSHKeyPair: Sendable {
    public let privateKey: Curve25519.Signing.PrivateKey

    public init() {
        privateKey = Curve25519.Signing.PrivateKey()
    }

    public init(rawRepresentation: [UInt8]) throws(KilnError) {
        do {
            privateKey = try Curve25519.Signing.PrivateKey(rawRepresentation: rawRepresentation)
        } catch {
            throw KilnError(.invalidArgument, "not an ed25519 private key")
        }
    }

    /// The 32-byte seed, as a checkpoint stores it.
    public var rawRepresentation: [UInt8] { Array(privateKey.rawRepresentation) }

    /// `ssh-ed25519 AAAA… comment`, for authorized_keys (RFC 8709's public key blob, base64).
    public func openSSHPublicKey(comment: String) -> String {
        "ssh-ed25519 " + Data(Self.publicBlob(Array(privateKey.publicKey.rawRepresentation))).base64EncodedString() + " " + comment
    }

    /// The private key in OpenSSH's own file format, so that `ssh -i` works against a kept VM.
    public func openSSHPrivateKeyFile(comment: String) -> String {
        let publicKey = Array(privateKey.publicKey.rawRepresentation)
        let seed = Array(privateKey.rawRepresentation)
        let check = UInt32.random(in: 0...UInt32.max)
        let checkBytes = Self.uint32(check)
        var privateBlock = checkBytes + checkBytes + Self.string(Array("ssh-ed25519".utf8)) + Self.string(publicKey)
            + Self.string(seed + publicKey) + Self.string(Array(comment.utf8))
        var padding: UInt8 = 1
        while privateBlock.count % 8 != 0 {
            privateBlock.append(padding)
            padding += 1
        }
        let body = Array("openssh-key-v1".utf8) + [0] + Self.string(Array("none".utf8)) + Self.string(Array("none".utf8)) + Self.string([])
            + [0, 0, 0, 1] + Self.string(Self.publicBlob(publicKey)) + Self.string(privateBlock)
        let base64 = Data(body).base64EncodedString()
        var lines = ["-----BEGIN OPENSSH PRIVATE KEY-----"]
        var index = base64.startIndex
        while index < base64.endIndex {
            let end = base64.index(index, offsetBy: 70, limitedBy: base64.endIndex) ?? base64.endIndex
            lines.append(String(base64[index..<end]))
            index = end
        }
        lines.append("-----END OPENSSH PRIVATE KEY-----")
        return lines.joined(separator: "\n") + "\n"
    }

    private static func publicBlob(_ publicKey: [UInt8]) -> [UInt8] {
        string(Array("ssh-ed25519".utf8)) + string(publicKey)
    }

    private static func uint32(_ value: UInt32) -> [UInt8] {
        [UInt8(value >> 24), UInt8((value >> 16) & 0xFF), UInt8((value >> 8) & 0xFF), UInt8(value & 0xFF)]
    }

    /// An SSH wire-format string: a big-endian length, then the bytes.
    private static func string(_ bytes: [UInt8]) -> [UInt8] {
        uint32(UInt32(bytes.count)) + bytes
    }
}

/// The host key a build first saw, as `type base64` (OpenSSH's public key text without a comment). Later connections
/// (after a reboot, or a resumed checkpoint's) must present the same key.
public final class HostKeyPin: @unchecked Sendable {
    private let state = Locked<String?>(nil)
    public init() {}

    /// A pin carried over from an earlier connection (a resumed checkpoint's guest keeps its host key).
    public init(pinned openSSHKey: String) throws(KilnError) {
        guard let key = Self.canonical(openSSHKey) else {
            throw KilnError(.invalidArgument, "expected an OpenSSH public host key, found \"\(openSSHKey.prefix(40))…\"")
        }
        state.withLock { $0 = key }
    }

    public var pinnedKey: String? { state.current }

    /// Whether a handshake may go on with `key`: a pinned key must match; before the first login any key may, and
    /// nothing is pinned yet. An image's agent may regenerate the host keys while it provisions the build user
    /// (waagent's `Provisioning.RegenerateSshHostKeyPair`), so the key seen by attempts that are refused is not the
    /// key the provisioned guest keeps. Nil if admitted, otherwise why not.
    public func admits(openSSHKey key: String) -> String? {
        let key = Self.canonical(key) ?? key
        return state.withLock { pinned in
            guard let existing = pinned, existing != key else { return nil }
            return Self.mismatch(presented: key, pinned: existing)
        }
    }

    /// Pins `key` if nothing is pinned (called once a login succeeded); nil if accepted, otherwise why not.
    public func check(openSSHKey key: String) -> String? {
        let key = Self.canonical(key) ?? key
        return state.withLock { pinned in
            guard let existing = pinned else {
                pinned = key
                return nil
            }
            return existing == key ? nil : Self.mismatch(presented: key, pinned: existing)
        }
    }

    private static func mismatch(presented: String, pinned: String) -> String {
        "the guest presented host key \(presented), not the key \(pinned) pinned when the build first connected"
    }

    /// `type base64` of an OpenSSH public key line (a comment dropped); nil unless the base64 is a key blob of that
    /// type (RFC 4253, 6.6: the blob begins with the algorithm's name as an SSH string).
    private static func canonical(_ text: String) -> String? {
        let fields = text.split(separator: " ", omittingEmptySubsequences: true)
        guard fields.count >= 2, let blob = Data(base64Encoded: String(fields[1])).map(Array.init), blob.count > 4 else { return nil }
        let length = Int(blob[0]) << 24 | Int(blob[1]) << 16 | Int(blob[2]) << 8 | Int(blob[3])
        guard length > 0, blob.count > 4 + length, blob[4..<(4 + length)].elementsEqual(fields[0].utf8) else { return nil }
        return "\(fields[0]) \(fields[1])"
    }
}

/// The SHA-256 of the certificate a guest's WinRM HTTPS listener presented when it first answered; later
/// connections (and a kept VM's command line) must see the same certificate.
public final class CertificatePin: @unchecked Sendable {
    private let state = Locked<[UInt8]?>(nil)
    public init() {}

    public var sha256: [UInt8]? { state.current }

    /// Pins `sha256` if nothing is pinned yet.
    public func pinIfUnset(_ sha256: [UInt8]?) {
        guard let sha256 else { return }
        state.withLock { if $0 == nil { $0 = sha256 } }
    }
}
