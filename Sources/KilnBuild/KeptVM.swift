import Foundation
import KilnGuest
import KilnSupport

/// A build VM kept after a failure (`--on-error abort`, errorHandling abort), recorded as `kept.json` in its run
/// directory for `kiln vm list|ssh|stop`. The VM lives as long as the build process that kept it (the embedded
/// libvirt driver is inside it); `kiln vm stop` asks that process to tear it down.
public struct KeptVM: Codable, Sendable, Equatable {
    public var runID: String
    public var templateName: String
    public var templatePath: String
    public var domainName: String
    public var sshPort: Int
    public var username: String
    public var privateKeyPath: String
    /// The guest's host key as a known_hosts line, so `ssh` checks it instead of trusting whatever answers.
    public var knownHostsPath: String
    public var hostKey: String
    /// The process keeping the VM (ProcessIdentity).
    public var owner: String
    public var keptAt: Date
    public var failure: String
    /// A Windows VM: reached with `kiln winrm exec` at this URL, with the password in `winrmPasswordPath` (mode 0600).
    public var winrmURL: String? = nil
    public var winrmPasswordPath: String? = nil
    /// The SHA-256 (hex) of the certificate the build pinned when the guest first answered: the command line to
    /// reach the VM pins it too, instead of accepting any certificate.
    public var winrmCertificateSHA256: String? = nil

    static func passwordPath(runDirectory: String) -> String { runDirectory + "/winrm-password" }

    /// How to reach the VM, as printed when it is kept.
    public var reachCommand: String {
        guard let winrmURL else { return sshCommand }
        let trust = winrmCertificateSHA256.map { "--pin-sha256 \($0)" } ?? "--insecure"
        return "kiln winrm exec --url \(winrmURL) --username \(username) \(trust) -- CMD (KILN_WINRM_PASSWORD from \(winrmPasswordPath ?? "?"))"
    }

    public var sshCommand: String {
        (["ssh"] + sshArguments).map(ShellQuote.quoteIfNeeded).joined(separator: " ")
    }

    /// Arguments for OpenSSH's `ssh` that reach the VM as the build user, checking its pinned host key.
    public var sshArguments: [String] {
        ["-i", privateKeyPath, "-p", String(sshPort), "-o", "IdentitiesOnly=yes", "-o", "UserKnownHostsFile=\(knownHostsPath)",
         "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR", "\(username)@127.0.0.1"]
    }

    public var isAlive: Bool { ProcessIdentity(owner)?.isAlive == true }

    static func path(runDirectory: String) -> String { runDirectory + "/kept.json" }

    /// Writes the record with what reaches the VM: the pinned host key for SSH, or the WinRM password.
    func write(runDirectory: String, winrmPassword: String? = nil) throws(KilnError) {
        if let winrmPasswordPath {
            try SecretFile.write(Data((winrmPassword ?? "").utf8), to: winrmPasswordPath)
        } else {
            try AtomicFile.write(Data("[127.0.0.1]:\(sshPort) \(hostKey)\n".utf8), to: knownHostsPath)
        }
        try RecordFile.write(self, to: KeptVM.path(runDirectory: runDirectory))
    }

    static func remove(runDirectory: String) {
        try? FileManager.default.removeItem(atPath: path(runDirectory: runDirectory))
        try? FileManager.default.removeItem(atPath: runDirectory + "/known_hosts")
        try? FileManager.default.removeItem(atPath: passwordPath(runDirectory: runDirectory))
    }

    public static func read(runDirectory: String) -> KeptVM? {
        RecordFile.read(KeptVM.self, from: path(runDirectory: runDirectory))
    }

    /// The kept VMs whose keeping process still runs.
    public static func list(state: StateDirectory) -> [KeptVM] { survey(state: state).alive }

    /// The kept VMs: those whose keeping process still runs, and those whose keeper died (killed outright, a
    /// crash). A dead keeper's VM is really stopped here — its QEMU, whose command line names the run directory's
    /// disk, is killed if the keeper's watchdog did not already — and its record removed.
    public static func survey(state: StateDirectory) -> (alive: [KeptVM], orphaned: [KeptVM]) {
        var alive: [KeptVM] = []
        var orphaned: [KeptVM] = []
        for run in (try? FileManager.default.contentsOfDirectory(atPath: state.runsPath)) ?? [] {
            let directory = state.runsPath + "/" + run
            guard let kept = read(runDirectory: directory) else { continue }
            if kept.isAlive {
                alive.append(kept)
            } else {
                OrphanProcesses.kill(naming: directory)
                remove(runDirectory: directory)
                orphaned.append(kept)
            }
        }
        return (alive.sorted { $0.keptAt < $1.keptAt }, orphaned.sorted { $0.keptAt < $1.keptAt })
    }

    /// Asks the keeping process to tear the VM down (SIGTERM) and waits for it to finish.
    public func stop(state: StateDirectory, timeout: Duration = .seconds(60)) async throws(KilnError) {
        guard let identity = ProcessIdentity(owner), identity.isAlive else {
            OrphanProcesses.kill(naming: state.runsPath + "/" + runID)
            KeptVM.remove(runDirectory: state.runsPath + "/" + runID)
            return
        }
        guard kill(identity.pid, SIGTERM) == 0 else {
            throw KilnError(.external, "cannot signal process \(identity.pid), which keeps the VM of run \(runID): \(String(cString: strerror(errno)))")
        }
        let clock = ContinuousClock()
        let start = clock.now
        while identity.isAlive && KeptVM.read(runDirectory: state.runsPath + "/" + runID) != nil {
            guard clock.now - start < timeout else {
                throw KilnError(.timeout, "process \(identity.pid) did not tear down the VM of run \(runID) within \(DurationText.format(timeout))")
            }
            try? await Task.sleep(for: .milliseconds(200))
        }
    }
}
