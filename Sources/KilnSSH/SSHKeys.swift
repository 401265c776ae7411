import Crypto
import Foundation
import KilnSupport
import NIOCore
import NIOSSH

/// A fresh ed25519 key for one build: the private half authenticates Kiln, the public half goes into the guest.
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

    /// `ssh-ed25519 AAAA… comment`, for authorized_keys.
    public func openSSHPublicKey(comment: String) -> String {
        String(openSSHPublicKey: NIOSSHPrivateKey(ed25519Key: privateKey).publicKey) + " " + comment
    }

    /// The private key in OpenSSH's own file format, so that `ssh -i` works against a kept VM.
    public func openSSHPrivateKeyFile(comment: String) -> String {
        let publicKey = Array(privateKey.publicKey.rawRepresentation)
        let seed = Array(privateKey.rawRepresentation)
        func string(_ bytes: [UInt8]) -> [UInt8] {
            let count = UInt32(bytes.count)
            return [UInt8(count >> 24), UInt8((count >> 16) & 0xFF), UInt8((count >> 8) & 0xFF), UInt8(count & 0xFF)] + bytes
        }
        let publicBlob = string(Array("ssh-ed25519".utf8)) + string(publicKey)
        let check = UInt32.random(in: 0...UInt32.max)
        let checkBytes = [UInt8(check >> 24), UInt8((check >> 16) & 0xFF), UInt8((check >> 8) & 0xFF), UInt8(check & 0xFF)]
        var privateBlock = checkBytes + checkBytes + string(Array("ssh-ed25519".utf8)) + string(publicKey)
            + string(seed + publicKey) + string(Array(comment.utf8))
        var padding: UInt8 = 1
        while privateBlock.count % 8 != 0 {
            privateBlock.append(padding)
            padding += 1
        }
        let body = Array("openssh-key-v1".utf8) + [0] + string(Array("none".utf8)) + string(Array("none".utf8)) + string([])
            + [0, 0, 0, 1] + string(publicBlob) + string(privateBlock)
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
}

/// The host key a build first saw. Later connections (after a reboot) must present the same key.
public final class HostKeyPin: @unchecked Sendable {
    private let state = Locked<NIOSSHPublicKey?>(nil)
    public init() {}

    /// A pin carried over from an earlier connection (a resumed checkpoint's guest keeps its host key).
    public init(pinned openSSHKey: String) throws(KilnError) {
        do {
            let key = try NIOSSHPublicKey(openSSHPublicKey: openSSHKey)
            state.withLock { $0 = key }
        } catch {
            throw KilnError(.invalidArgument, "expected an OpenSSH public host key, found \"\(openSSHKey.prefix(40))…\"")
        }
    }

    public var pinnedKey: String? { state.current.map { String(openSSHPublicKey: $0) } }

    /// Whether a handshake may go on with `key`: a pinned key must match; before the first login any key may, and
    /// nothing is pinned yet. An image's agent may regenerate the host keys while it provisions the build user
    /// (waagent's `Provisioning.RegenerateSshHostKeyPair`), so the key seen by attempts that are refused is not the
    /// key the provisioned guest keeps.
    func admits(_ key: NIOSSHPublicKey) -> String? {
        state.withLock { pinned in
            guard let existing = pinned, existing != key else { return nil }
            return "the guest presented host key \(String(openSSHPublicKey: key)), not the key \(String(openSSHPublicKey: existing)) pinned when the build first connected"
        }
    }

    /// Pins `key` if nothing is pinned (called once a login succeeded); nil if accepted, otherwise why not.
    func check(_ key: NIOSSHPublicKey) -> String? {
        state.withLock { pinned in
            guard let existing = pinned else {
                pinned = key
                return nil
            }
            guard existing == key else {
                return "the guest presented host key \(String(openSSHPublicKey: key)), not the key \(String(openSSHPublicKey: existing)) pinned when the build first connected"
            }
            return nil
        }
    }
}

public struct SSHEndpoint: Sendable {
    public var host: String
    public var port: Int
    public var username: String
    public var keyPair: SSHKeyPair
    public var hostKeyPin: HostKeyPin

    public init(host: String = "127.0.0.1", port: Int, username: String, keyPair: SSHKeyPair, hostKeyPin: HostKeyPin = HostKeyPin()) {
        self.host = host
        self.port = port
        self.username = username
        self.keyPair = keyPair
        self.hostKeyPin = hostKeyPin
    }
}
