import KilnSupport

/// Where and how a communicator reaches a guest: a port on a host's loopback that is forwarded to the guest's
/// SSH or WinRM listener, the build user, and what authenticates it. The builder hands this out; a communicator
/// turns it into a session. The pins are shared objects: the first login pins what the guest presented, and
/// every later login of the build (after a reboot, or of a resumed checkpoint) must see the same.
public struct GuestEndpoint: Sendable, CustomStringConvertible {
    public enum Access: Sendable {
        /// SSH, logging in with the build's key; the guest's host key pinned at the first login.
        case ssh(key: SSHKeyPair, hostKey: HostKeyPin)
        /// WinRM over HTTPS (NTLM) with a password; the listener's certificate pinned when it first answers.
        /// `hostAddressForGuest` is where the guest reaches the host's loopback, to fetch uploads from it.
        case winRM(password: String, certificate: CertificatePin, hostAddressForGuest: String)
    }

    public var host: String
    public var port: Int
    public var username: String
    public var access: Access

    public init(host: String = "127.0.0.1", port: Int, username: String, access: Access) {
        self.host = host
        self.port = port
        self.username = username
        self.access = access
    }

    /// The protocol's name, for messages.
    public var protocolName: String {
        switch access {
        case .ssh: "SSH"
        case .winRM: "WinRM"
        }
    }

    /// `ssh://packer@127.0.0.1:2222`, `https://127.0.0.1:5986/wsman`.
    public var url: String {
        switch access {
        case .ssh: "ssh://\(username)@\(host):\(port)"
        case .winRM: "https://\(host):\(port)/wsman"
        }
    }

    /// `ssh 127.0.0.1:2222`, `winrm https://127.0.0.1:5986/wsman`.
    public var description: String {
        switch access {
        case .ssh: "ssh \(host):\(port)"
        case .winRM: "winrm https://\(host):\(port)/wsman"
        }
    }
}

/// A way of reaching a guest (Packer's communicator): waits until the guest at an endpoint accepts a login and
/// returns the session. SSH and WinRM are its two implementations, each in its own module; the build picks one by
/// the endpoint's `access`.
public protocol Communicator: Sendable {
    /// Waits up to `timeout` for a login, tolerating what a booting guest does (refused connections, a listener
    /// not up yet, credentials not yet provisioned). `progress` hears the latest failed attempt's error as the wait goes
    /// on (the caller reports progress and notices a guest that keeps rejecting the credentials); `abort` is asked
    /// between attempts and
    /// ends the wait with its error (the VM stopped). A timeout is a `.timeout` error naming the endpoint.
    func waitForSession(_ endpoint: GuestEndpoint, timeout: Duration,
                        progress: @escaping @Sendable (KilnError) -> Void,
                        abort: @escaping @Sendable () async -> KilnError?) async throws(KilnError) -> any GuestSession
}
