import KilnGuest
import KilnSupport
import NIOSSH

/// The host key pin (KilnGuest) checked against the keys NIOSSH hands the client.
extension HostKeyPin {
    func admits(_ key: NIOSSHPublicKey) -> String? { admits(openSSHKey: String(openSSHPublicKey: key)) }

    func check(_ key: NIOSSHPublicKey) -> String? { check(openSSHKey: String(openSSHPublicKey: key)) }
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

    /// The SSH form of a guest endpoint; nil for another communicator's.
    public init?(_ endpoint: GuestEndpoint) {
        guard case .ssh(let key, let hostKey) = endpoint.access else { return nil }
        self.init(host: endpoint.host, port: endpoint.port, username: endpoint.username, keyPair: key, hostKeyPin: hostKey)
    }
}
