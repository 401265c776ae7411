import Foundation
import KilnGuest
import KilnSupport

/// Waiting for the image's own agent to provision the guest, and what to say when a guest will not let the build
/// in. The machine never opens a session: a communicator does, with `endpoint`.
extension BuildMachine {
    /// On the first login of a fresh boot of an image the Azure Linux agent provisions, waits until the agent reports
    /// Ready to the wireserver (it creates the user before it regenerates the SSH host keys and restarts sshd, so a
    /// login in between would pin a key the guest is about to replace). Returns at once otherwise. Fails at once when
    /// the agent reports that provisioning failed, or when the VM stops.
    public func waitUntilProvisioned(timeout: Duration) async throws(KilnError) {
        guard awaitsAgentReady, let fabric else { return }
        let clock = ContinuousClock()
        let start = clock.now
        var lastReported = start
        while true {
            let reports = fabric.healthReports
            if reports.contains(where: { $0.state == "Ready" }) {
                awaitsAgentReady = false
                return
            }
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

    /// Why a wait for the guest's communicator cannot go on, or nil while it can: the VM stopped, or the guest has
    /// rejected the build's credentials since `rejectedSince` for longer than `rejectionLimit` (two minutes once its
    /// agent has reported that provisioning finished). Each error says what Kiln found and presented.
    public func verdictWhileWaiting(after elapsed: Duration, rejectedSince: ContinuousClock.Instant?,
                                    rejectionLimit: Duration) async -> KilnError? {
        let endpoint = self.endpoint
        let what = endpoint.protocolName
        guard await isRunning() else {
            return KilnError(.external, "the VM stopped while waiting for \(what) after \(DurationText.format(elapsed)); last console lines:\n\(consoleTail(lines: 15))")
        }
        guard let rejectedSince else { return nil }
        let ready = fabric?.healthReports.contains { $0.state == "Ready" } == true
        let limit = ready ? min(rejectionLimit, .seconds(120)) : rejectionLimit
        guard ContinuousClock.now - rejectedSince >= limit else { return nil }
        let rejected: String
        switch endpoint.access {
        case .ssh: rejected = "sshd has rejected the build key"
        case .winRM: rejected = "WinRM service has rejected the build's password"
        }
        return KilnError(.external, "the guest's \(rejected) for user \(endpoint.username) for \(DurationText.format(limit))"
                         + (ready ? " after its agent reported that provisioning had finished" : "")
                         + "; it will not accept it. " + provisioningDiagnosis)
    }

    /// What Kiln found in the image, what it presented, what the guest reported, and what to do.
    public var provisioningDiagnosis: String {
        var parts: [String] = []
        if let provisioningFindings { parts.append("The image: \(provisioningFindings).") }
        switch provisioning {
        case .noCloud?:
            parts.append("Kiln attached a cloud-init NoCloud seed for user \(username); if the image's cloud-init does not read NoCloud, import it with `kiln image import` (which inspects its datasource list) or pass --inject offline.")
        case .azure?, .waagent?:
            let reports = fabric?.healthReports ?? []
            let said = reports.last.map { "the guest last reported \($0.state)" + ($0.description.map { " (\($0))" } ?? "") } ?? "the guest never reported to the wireserver"
            let agent = provisioning == .azure ? "The console log (\(consolePath)) shows cloud-init's Azure datasource at work."
                : "Kiln wrote the wireserver's address as a DHCP lease (\(writtenLeases.joined(separator: ", "))); the agent writes its log to /var/log/waagent.log in the guest, and the console log (\(consolePath)) shows the boot."
            parts.append("Kiln presented the VM as Azure (asset tag, ovf-env.xml for user \(username), wireserver, instance metadata; \(fabric?.requests ?? 0) requests answered); \(said). \(agent)")
        case .offline?:
            parts.append("Kiln wrote user \(username) and its key into the image offline; check that the image's sshd allows public-key logins.")
        case nil:
            break
        }
        return parts.joined(separator: " ")
    }

    /// The last lines of the serial console, without terminal escapes.
    public func consoleTail(lines: Int) -> String {
        guard let data = FileManager.default.contents(atPath: consolePath) else { return "(no console output)" }
        let text = String(decoding: data.suffix(64 * 1024), as: UTF8.self)
        let cleaned = text.replacingOccurrences(of: "\u{1B}\\[[0-9;?]*[A-Za-z]", with: "", options: .regularExpression)
            .replacingOccurrences(of: "\r", with: "")
        return cleaned.split(separator: "\n", omittingEmptySubsequences: true).suffix(lines).joined(separator: "\n")
    }
}
