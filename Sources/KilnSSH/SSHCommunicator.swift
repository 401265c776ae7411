import KilnGuest
import KilnSupport

/// The SSH communicator: waits for a login with the build's key (`SSHSession.waitForConnection`).
public struct SSHCommunicator: Communicator {
    public init() {}

    public func waitForSession(_ endpoint: GuestEndpoint, timeout: Duration,
                               progress: @escaping @Sendable (KilnError) -> Void,
                               abort: @escaping @Sendable () async -> KilnError?) async throws(KilnError) -> any GuestSession {
        guard let ssh = SSHEndpoint(endpoint) else {
            throw KilnError(.internalError, "the SSH communicator cannot reach \(endpoint)")
        }
        return try await SSHSession.waitForConnection(ssh, timeout: timeout, progress: { _, _, error in progress(error) }, abort: abort)
    }
}
