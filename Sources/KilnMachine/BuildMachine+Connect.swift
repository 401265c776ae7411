import Foundation
import KilnSSH
import KilnSupport
import KilnWinRM

/// Waiting for the guest's communicator: SSH on a Linux guest (after the Azure Linux agent's Ready report when it
/// provisions the image), WinRM over HTTPS on a Windows guest.
extension BuildMachine {
    /// Waits for SSH (tolerating refused and reset connections while the guest boots), failing at once if the
    /// VM stops. A guest that keeps rejecting the build key long after its agent said it was provisioned (or for
    /// `rejectionLimit` in any case) fails early; either failure says what Kiln found in the image, what it
    /// presented, and what the guest reported.
    public func waitForSSH(timeout: Duration, rejectionLimit: Duration = .seconds(300)) async throws(KilnError) -> SSHSession {
        let clock = ContinuousClock()
        let start = clock.now
        let reported = Locked(ContinuousClock.now)
        let rejectedSince = Locked<ContinuousClock.Instant?>(nil)
        let events = self.events
        let port = sshPort
        let fabric = self.fabric
        if awaitsAgentReady, let fabric {
            try await waitForAgentReady(fabric, timeout: timeout)
            awaitsAgentReady = false
        }
        do {
            return try await SSHSession.waitForConnection(endpoint, timeout: timeout - (clock.now - start), progress: { attempt, elapsed, error in
                let rejected = error.code == .authenticationRejected
                rejectedSince.withLock { since in
                    if !rejected { since = nil } else if since == nil { since = .now }
                }
                let due = reported.withLock { last -> Bool in
                    guard ContinuousClock.now - last >= .seconds(15) else { return false }
                    last = .now
                    return true
                }
                if due { events("waiting for SSH on 127.0.0.1:\(port): \(DurationText.format(elapsed)) of \(DurationText.format(timeout)) (\(error.message))") }
            }, abort: { [weak self] in
                guard let self else { return KilnError(.cancelled, "machine gone") }
                guard await self.isRunning() else {
                    return KilnError(.external, "the VM stopped while waiting for SSH after \(DurationText.format(clock.now - start)); last console lines:\n\(self.consoleTail(lines: 15))")
                }
                if let since = rejectedSince.current {
                    let ready = fabric?.healthReports.contains { $0.state == "Ready" } == true
                    let limit = ready ? min(rejectionLimit, .seconds(120)) : rejectionLimit
                    if ContinuousClock.now - since >= limit {
                        return KilnError(.external, "the guest's sshd has rejected the build key for user \(self.username) for \(DurationText.format(limit))"
                                         + (ready ? " after its agent reported that provisioning had finished" : "")
                                         + "; it will not accept it. " + self.provisioningDiagnosis)
                    }
                }
                return nil
            })
        } catch {
            guard error.code == .timeout else { throw error }
            throw KilnError(.timeout, error.message + ". " + provisioningDiagnosis, cause: error.cause)
        }
    }

    /// Waits until the Azure Linux agent reports Ready to the wireserver; fails at once when it reports that
    /// provisioning failed, or when the VM stops.
    private func waitForAgentReady(_ fabric: AzureFabric, timeout: Duration) async throws(KilnError) {
        let clock = ContinuousClock()
        let start = clock.now
        var lastReported = start
        while true {
            let reports = fabric.healthReports
            if reports.contains(where: { $0.state == "Ready" }) { return }
            if let failed = reports.last(where: { $0.state != "Ready" && $0.subStatus == "ProvisioningFailed" }) {
                throw KilnError(.external, "the guest's Azure Linux agent reported that provisioning failed: \(failed.description ?? failed.state). " + provisioningDiagnosis)
            }
            guard await isRunning() else {
                throw KilnError(.external, "the VM stopped while its Azure Linux agent was provisioning, after \(DurationText.format(clock.now - start)); last console lines:\n\(consoleTail(lines: 15))")
            }
            let elapsed = clock.now - start
            if elapsed >= timeout {
                throw KilnError(.timeout, "Timeout waiting for SSH: the guest's Azure Linux agent did not report Ready within \(DurationText.format(timeout)). " + provisioningDiagnosis)
            }
            if clock.now - lastReported >= .seconds(15) {
                lastReported = clock.now
                events("waiting for the Azure Linux agent to provision the build user and report Ready: \(DurationText.format(elapsed)) of \(DurationText.format(timeout))")
            }
            try? await Task.sleep(for: .seconds(1))
            if Task.isCancelled { throw KilnError(.cancelled, "cancelled while waiting for the Azure Linux agent") }
        }
    }

    /// The WinRM endpoint a Windows guest answers on (its HTTPS port forwarded to 127.0.0.1).
    public var winRMOptions: WinRMOptions? {
        guard let windows = options.windows else { return nil }
        return WinRMOptions(endpoint: WinRMEndpoint(secure: true, host: "127.0.0.1", port: sshPort), username: windows.username,
                            password: windows.password, auth: .ntlm, insecure: true)
    }

    /// Waits for WinRM over HTTPS (tolerating refusals while Windows boots and runs setup), failing at once if
    /// the VM stops. Uploads are then served from the host for the guest to fetch through 10.0.2.2.
    public func waitForWinRM(timeout: Duration) async throws(KilnError) -> WinRMSession {
        guard let options = winRMOptions else { throw KilnError(.internalError, "not a Windows guest") }
        let clock = ContinuousClock()
        let start = clock.now
        let events = self.events
        let session = try await WinRMSession.waitUntilReady(options, timeout: timeout, hostAddressForGuest: "10.0.2.2", progress: { events($0) },
                                                     abort: { [weak self] in
            guard let self else { return KilnError(.cancelled, "machine gone") }
            guard await self.isRunning() else {
                return KilnError(.external, "the VM stopped while waiting for WinRM after \(DurationText.format(clock.now - start)); last console lines:\n\(self.consoleTail(lines: 15))")
            }
            return nil
        })
        winRMCertificateSHA256 = session.client.options.pinnedCertificateSHA256
        return session
    }
}
