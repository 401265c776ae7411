import Foundation
import KilnGuest
import KilnSupport
import NIOSSH
import Testing
@testable import KilnSSH

@Suite("SSH keys")
struct SSHKeyTests {
    @Test("the build key's OpenSSH private key file is one ssh-keygen reads, and gives the same public key")
    func privateKeyFile() async throws {
        let pair = SSHKeyPair()
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-key-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(FileManager.default.createFile(atPath: path, contents: Data(pair.openSSHPrivateKeyFile(comment: "kiln-test").utf8),
                                               attributes: [.posixPermissions: 0o600]))
        let derived = try await Subprocess.check("ssh-keygen", ["-y", "-f", path])
        let expected = pair.openSSHPublicKey(comment: "kiln-test").split(separator: " ").prefix(2).joined(separator: " ")
        #expect(derived.stdoutText.split(separator: " ").prefix(2).joined(separator: " ") == expected)
    }

    @Test("the first host key is pinned and a different one is rejected")
    func hostKeyPinning() {
        let pin = HostKeyPin()
        let first = NIOSSHPrivateKey(ed25519Key: .init()).publicKey
        let second = NIOSSHPrivateKey(ed25519Key: .init()).publicKey
        #expect(pin.check(first) == nil)
        #expect(pin.check(first) == nil)
        let problem = pin.check(second)
        #expect(problem?.contains("pinned") == true)
        #expect(pin.pinnedKey == String(openSSHPublicKey: first))
    }

    @Test("before the first login any host key is admitted and none pinned (an agent may regenerate them while provisioning); after it, only the pinned one")
    func hostKeyAdmittedBeforeLogin() {
        let pin = HostKeyPin()
        let beforeProvisioning = NIOSSHPrivateKey(ed25519Key: .init()).publicKey
        let provisioned = NIOSSHPrivateKey(ed25519Key: .init()).publicKey
        #expect(pin.admits(beforeProvisioning) == nil)
        #expect(pin.pinnedKey == nil)
        #expect(pin.admits(provisioned) == nil)
        #expect(pin.check(provisioned) == nil)
        #expect(pin.pinnedKey == String(openSSHPublicKey: provisioned))
        #expect(pin.admits(beforeProvisioning)?.contains("pinned") == true)
        #expect(pin.admits(provisioned) == nil)
    }

    @Test("a pin carried over (a checkpoint's host key) must be an OpenSSH public key whose blob names its type")
    func pinnedKeyIsChecked() throws {
        let key = String(openSSHPublicKey: NIOSSHPrivateKey(ed25519Key: .init()).publicKey)
        #expect(try HostKeyPin(pinned: key + " root@guest").pinnedKey == key, "the comment is dropped")
        let blob = String(key.split(separator: " ")[1])
        for bad in ["", "ssh-ed25519", "ssh-ed25519 not-base64!", "ssh-rsa " + blob, "ssh-ed25519 " + Data("x".utf8).base64EncodedString()] {
            #expect(throws: KilnError.self, "\(bad)") { try HostKeyPin(pinned: bad) }
        }
    }

    @Test("shell quoting survives quotes, dollars and spaces")
    func quoting() async throws {
        let tricky = "it's a $HOME `x` \"y\" path"
        let result = try await Subprocess.check("/bin/sh", ["-c", "printf %s " + ShellQuote.quote(tricky)])
        #expect(result.stdoutText == tricky)
    }
}
