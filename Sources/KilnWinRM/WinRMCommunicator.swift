import KilnGuest
import KilnSupport

/// The WinRM communicator: waits until the guest's HTTPS listener runs a command for the build's credentials
/// (NTLM, the listener's self-signed certificate pinned when it first answers), then serves uploads from the host
/// for the guest to fetch.
public struct WinRMCommunicator: Communicator {
    public init() {}

    /// The WinRM options of a guest endpoint (the certificate pin as it stands); nil for another communicator's.
    public static func options(_ endpoint: GuestEndpoint) -> WinRMOptions? {
        guard case .winRM(let password, let certificate, _) = endpoint.access else { return nil }
        var options = WinRMOptions(endpoint: WinRMEndpoint(secure: true, host: endpoint.host, port: endpoint.port), username: endpoint.username,
                                   password: password, auth: .ntlm, insecure: true)
        options.pinnedCertificateSHA256 = certificate.sha256
        return options
    }

    public func waitForSession(_ endpoint: GuestEndpoint, timeout: Duration,
                               progress: @escaping @Sendable (KilnError) -> Void,
                               abort: @escaping @Sendable () async -> KilnError?) async throws(KilnError) -> any GuestSession {
        guard let options = Self.options(endpoint), case .winRM(_, let certificate, let hostAddress) = endpoint.access else {
            throw KilnError(.internalError, "the WinRM communicator cannot reach \(endpoint)")
        }
        let session = try await WinRMSession.waitUntilReady(options, timeout: timeout, hostAddressForGuest: hostAddress,
                                                            attemptFailed: progress, abort: abort)
        certificate.pinIfUnset(session.client.options.pinnedCertificateSHA256)
        return session
    }
}
