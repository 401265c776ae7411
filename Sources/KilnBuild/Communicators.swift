import KilnGuest
import KilnMachine
import KilnSSH
import KilnSupport
import KilnWinRM

/// The communicators a build can use, picked by the endpoint the builder hands out: one line per communicator
/// module (Packer's `communicator` setting, decided here by the guest's OS).
public enum Communicators {
    public static func communicator(for endpoint: GuestEndpoint) -> any Communicator {
        switch endpoint.access {
        case .ssh: SSHCommunicator()
        case .winRM: WinRMCommunicator()
        }
    }
}

extension BuildMachine {
    /// Waits for the guest to accept the build's login through its communicator (after the image's agent has
    /// provisioned it, when one does), tolerating refused and reset connections while it boots and failing at once
    /// if the VM stops. A guest that keeps rejecting the credentials long after its agent said it was provisioned
    /// (or for `rejectionLimit` in any case) fails early; either failure says what Kiln found in the image, what it
    /// presented, and what the guest reported. `communicator` replaces the one the endpoint calls for (tests).
    public func waitForGuest(timeout: Duration, rejectionLimit: Duration = .seconds(300),
                             communicator: (any Communicator)? = nil) async throws(KilnError) -> any GuestSession {
        let clock = ContinuousClock()
        let start = clock.now
        try await waitUntilProvisioned(timeout: timeout)
        let endpoint = self.endpoint
        let what = endpoint.protocolName
        let reported = Locked(ContinuousClock.now)
        let rejectedSince = Locked<ContinuousClock.Instant?>(nil)
        let events = self.events
        let communicator = communicator ?? Communicators.communicator(for: endpoint)
        do {
            return try await communicator.waitForSession(endpoint, timeout: timeout - (clock.now - start), progress: { error in
                let rejected = error.code == .authenticationRejected
                rejectedSince.withLock { since in
                    if !rejected { since = nil } else if since == nil { since = .now }
                }
                let due = reported.withLock { last -> Bool in
                    guard ContinuousClock.now - last >= .seconds(15) else { return false }
                    last = .now
                    return true
                }
                if due {
                    events("waiting for \(what) on \(endpoint.host):\(endpoint.port): \(DurationText.format(clock.now - start)) of \(DurationText.format(timeout)) (\(error.message))")
                }
            }, abort: { [weak self] in
                guard let self else { return KilnError(.cancelled, "machine gone") }
                return await self.verdictWhileWaiting(after: clock.now - start, rejectedSince: rejectedSince.current,
                                                      rejectionLimit: rejectionLimit)
            })
        } catch {
            let diagnosis = provisioningDiagnosis
            guard error.code == .timeout, !diagnosis.isEmpty else { throw error }
            throw KilnError(.timeout, error.message + ". " + diagnosis, cause: error.cause)
        }
    }
}
