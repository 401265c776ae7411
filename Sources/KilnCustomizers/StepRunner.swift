import Foundation
import KilnDigest
import KilnFetch
import KilnGuest
import KilnSupport
import KilnTemplate

/// A customizer's verdict that its step failed, as the customizer decided it from the guest's answer (a non-zero
/// exit is a value; the customizer turns it into this): the message is complete and final for the user (the template
/// path, the step's label, what happened, the last lines of its output), so nothing wraps or prefixes it again.
/// Kiln's own faults are `KilnError`s; `BuildEngine.runStep` turns those of a step into a `StepFailure` naming the
/// step, and a failed step's `StepFailure` ends the build as failed (a cancel at the same moment wins).
public struct StepFailure: Error, Sendable {
    public var message: String

    public init(message: String) {
        self.message = message
    }
}

/// The guest connection a build holds, renewed when a step reboots the guest.
public final class GuestConnection: @unchecked Sendable {
    public private(set) var session: any GuestSession
    private let reconnect: @Sendable () async throws(KilnError) -> any GuestSession
    /// How long the guest may take to answer again after a disconnect: the build's SSH timeout.
    let reconnectTimeout: Duration

    public init(session: any GuestSession, reconnectTimeout: Duration,
         reconnect: @escaping @Sendable () async throws(KilnError) -> any GuestSession) {
        self.session = session
        self.reconnectTimeout = reconnectTimeout
        self.reconnect = reconnect
    }

    /// Scripts Kiln put in the guest and has not removed yet (a step that rebooted the guest, or failed while
    /// its VM is kept for inspection): the final cleanup removes them.
    private let placed = Locked<Set<String>>([])

    func placed(_ path: String) { placed.withLock { _ = $0.insert(path) } }
    func removed(_ path: String) { placed.withLock { _ = $0.remove(path) } }
    var placedFiles: [String] { placed.withLock { $0.sorted() } }

    func renew() async throws(KilnError) {
        await session.close()
        session = try await reconnect()
    }

    public func close() async { await session.close() }
}

/// The Linux form of the customizers (each type's own part is in its own file): fetches what a step needs, and runs
/// scripts against a guest session as AIB runs them through Packer's shell and file provisioners
/// (docs/aib-customizers.md has the evidence): a script goes to /tmp/script_NNNN.sh, runs with Packer's environment
/// variables and end-of-file on standard input, and is removed afterwards. Inline lines run as one `#!/bin/sh -e`
/// script as the build user (AIB's docs: prefix commands with sudo); a scriptUri script runs as root through
/// `sudo -E sh`, as Microsoft's quickstart scripts need.
public struct StepRunner: Sendable {
    /// nil while prefetching, before the VM exists.
    let connection: GuestConnection?
    let log: any BuildLog
    let events: @Sendable (ProgressEvent) -> Void
    let downloads: String
    let guestOS: OSType
    /// `--offline`: what a step downloads comes from this cache (file:// URIs are read where they are).
    var offline: DownloadCache? = nil
    /// Step labels by template path (LoadedTemplate.stepLabels).
    var labels: [String: String] = [:]

    public init(connection: GuestConnection?, log: any BuildLog, events: @escaping @Sendable (ProgressEvent) -> Void, downloads: String,
                guestOS: OSType, offline: DownloadCache? = nil, labels: [String: String] = [:]) {
        self.connection = connection
        self.log = log
        self.events = events
        self.downloads = downloads
        self.guestOS = guestOS
        self.offline = offline
        self.labels = labels
    }

    /// The URIs a step downloads, with the property that names each and the step's sha256Checksum.
    public static func uris(of step: Customizer) -> [(uri: String, property: String, checksum: String?)] {
        step.provisioner.downloads.map { ($0.uri, $0.property, $0.checksum) }
    }

    /// What Packer's shell provisioner puts before the script: the variables AIB's build VM sees (AIB's logs
    /// show exactly these two, with azure-arm for both), each as `KEY='value' `.
    static let packerEnvironment = "PACKER_BUILDER_TYPE='azure-arm' PACKER_BUILD_NAME='azure-arm' "

    /// The command that runs an uploaded Shell script: inline lines as the build user (Packer's default
    /// execute_command, as AIB's log shows it); a scriptUri script as root through `sh`, which also runs a
    /// script without a shebang (Packer's documented Azure execute_command).
    static func shellCommand(remotePath: String, elevated: Bool) -> String {
        let quoted = ShellQuote.quote(remotePath)
        return elevated ? "chmod +x \(quoted); \(packerEnvironment)sudo -E sh \(quoted)"
                        : "chmod +x \(quoted); \(packerEnvironment) \(quoted)"
    }

    /// What customization.log says of an inline script: how many lines and the file they went to, not their text.
    static func inlineScriptLogLine(lines: [String], local: String) -> String {
        "inline script (\(lines.count) line\(lines.count == 1 ? "" : "s")) written to \(local)"
    }

    /// Packer's remote name for a script: /tmp/script_<0…9998>.<ext>.
    static func remoteScriptPath(fileExtension: String) -> String {
        "/tmp/script_\(Int.random(in: 0..<9999)).\(fileExtension)"
    }

    /// A kept VM (errorHandling abort) keeps a failed step's script for inspection; otherwise it is removed.
    public var keepFailedScripts = false

    /// The label used in logs: the template's label for the step at `path` (LoadedTemplate.stepLabels: its name, or
    /// `customize[2] Shell` for an unnamed, empty or repeated one), else the same rule without the other steps.
    public static func label(_ step: Customizer, index: Int, list: String = "customize", path: String? = nil, labels: [String: String] = [:]) -> String {
        label(name: step.name, typeName: step.typeName, index: index, list: list, path: path, labels: labels)
    }

    public static func label(name: String?, typeName: String, index: Int, list: String = "customize", path: String? = nil, labels: [String: String] = [:]) -> String {
        if let path, let label = labels[path] { return label }
        if let name, !name.isEmpty { return name }
        return "\(list)[\(index)] \(typeName)"
    }

    /// Downloads and verifies what a step needs, before anything boots. Returns the sha256 of what it downloaded.
    @discardableResult
    public func prefetch(_ step: Customizer, index: Int, path: String) async throws -> String? {
        try await prefetch(step.provisioner, index: index, path: path)
    }

    @discardableResult
    func prefetch(_ provisioner: any Provisioner, index: Int, path: String) async throws -> String? {
        let label = StepRunner.label(name: provisioner.name, typeName: provisioner.typeName, index: index, path: path, labels: labels)
        return try await provisioner.prefetch(self, label: label, index: index, path: path)
    }

    var session: any GuestSession {
        get throws {
            guard let connection else { throw KilnError(.invalidState, "no guest connection") }
            return connection.session
        }
    }

    public func run(_ step: Customizer, index: Int, path: String) async throws {
        try await run(step.provisioner, index: index, path: path)
    }

    /// Runs a step on this (Linux) guest, in its provisioner's Linux form.
    func run(_ provisioner: any Provisioner, index: Int, path: String) async throws {
        let label = StepRunner.label(name: provisioner.name, typeName: provisioner.typeName, index: index, path: path, labels: labels)
        try await provisioner.run(linux: self, label: label, index: index, path: path)
    }

    /// A local script file for an inline or scriptUri step, checksum-verified.
    func materialize(_ source: ScriptSource, checksum: String?, label: String, path: String, index: Int,
                             fileExtension: String) async throws -> String {
        let local = downloads + "/script_\(index).\(fileExtension)"
        switch source {
        case .inline(let lines):
            let body = fileExtension == "sh" ? "#!/bin/sh -e\n" + lines.joined(separator: "\n") + "\n"
                                             : "$ErrorActionPreference = 'Stop'\n" + lines.joined(separator: "\n") + "\nexit $LASTEXITCODE\n"
            // The lines may carry secrets (a token, a secure parameter's value): the file is the user's alone, and the
            // log names it, as Packer logs a script's path and never its text.
            try SecretFile.write(Data(body.utf8), to: local)
            log.write(label, StepRunner.inlineScriptLogLine(lines: lines, local: local))
        case .scriptUri(let uri):
            if !FileManager.default.fileExists(atPath: local) {
                _ = try await fetchVerified(uri, checksum: checksum, label: label, path: path + ".scriptUri", name: "script_\(index).\(fileExtension)")
            }
            log.write(label, "script from \(uri)")
        }
        return local
    }

    func fetchVerified(_ uri: String, checksum: String?, label: String, path: String, name: String) async throws -> FetchedFile {
        let fetched: FetchedFile
        if let offline, DownloadCache.needsNetwork(uri) {
            guard let entry = offline.lookup(uri) else {
                throw StepFailure(message: "\(path) (\(label)): \(uri) is not in the download cache, and --offline touches no network (kiln fetch the template first)")
            }
            do {
                fetched = try offline.materialize(entry, to: downloads + "/" + name)
            } catch {
                throw StepFailure(message: "\(path) (\(label)): \(error.message)")
            }
            log.write(label, "offline: \(uri) from the download cache, \(fetched.sizeBytes) bytes, sha256 \(fetched.sha256) (fetched \(entry.fetchedAt.formatted(.iso8601)))")
            if checksum == nil { log.write(label, "no sha256Checksum given; pinned by the sha256 seen when it was fetched: \(entry.sha256)") }
        } else {
            log.write(label, "downloading \(uri)")
            do {
                fetched = try await Fetcher.fetch(uri, into: downloads, name: name)
            } catch where error.code == .cancelled {
                // A cancelled build is not a failed step: the caller tells the two apart by this code.
                log.write(label, "download cancelled")
                throw error
            } catch {
                throw StepFailure(message: "\(path) (\(label)): \(error.message)")
            }
            log.write(label, "downloaded \(fetched.sizeBytes) bytes, sha256 \(fetched.sha256)")
        }
        if let checksum {
            guard ChecksumCheck.matches(expected: checksum, actual: fetched.sha256) else {
                log.write(label, "checksum mismatch: expected \(checksum.lowercased()), actual \(fetched.sha256)")
                try? FileManager.default.removeItem(atPath: fetched.localPath)
                let checksumPath = path.split(separator: ".").dropLast().joined(separator: ".") + ".sha256Checksum"
                throw StepFailure(message: "\(checksumPath) (\(label)): sha256 checksum mismatch for \(uri): expected \(checksum.lowercased()), actual \(fetched.sha256); nothing was run or uploaded")
            }
            log.write(label, "checksum verified: \(fetched.sha256)")
        } else {
            log.write(label, "no sha256Checksum given; content sha256 is \(fetched.sha256)")
        }
        return fetched
    }

    /// Uploads the script to /tmp and runs it; a dropped connection is a reboot if the guest's boot ID changed.
    /// The script is removed afterwards, whatever its outcome (a kept VM keeps a failed step's script).
    func execute(script local: String, runner: (String) -> String, validExitCodes: [Int], label: String, index: Int, path: String) async throws {
        let remote = StepRunner.remoteScriptPath(fileExtension: URL(fileURLWithPath: local).pathExtension)
        let kind = local.hasSuffix(".ps1") ? "powershell" : "shell"
        log.packerUI(label, "Provisioning with \(kind) script: \(local)")
        connection?.placed(remote)
        try await session.upload(localPath: local, remotePath: remote)
        let bootID = try await currentBootID()
        let command = runner(remote)
        log.write(label, "running: \(command)")
        log.packerDebug(label, "[DEBUG] starting remote command: \(command)")
        let (result, tail) = try await StepOutput.exec(command, on: session, stdin: [], label: label, log: log, events: events)
        switch result.outcome {
        case .exited(let code):
            log.write(label, "exit status \(code)")
            log.packerDebug(label, "[INFO] RPC client: Communicator ended with: \(code)")
            guard validExitCodes.contains(Int(code)) else {
                if !keepFailedScripts { await remove(remote, label: label) }
                throw StepFailure(message: "\(path) (\(label)) failed with exit status \(code)"
                                  + (validExitCodes == [0] ? "" : " (valid: \(validExitCodes.map(String.init).joined(separator: ", ")))")
                                  + ". Last output:\n" + tail.text)
            }
            try await settle(afterBootID: bootID, label: label)
            await remove(remote, label: label)
        case .signaled(let signal):
            log.write(label, "killed by signal \(signal)")
            if !keepFailedScripts { await remove(remote, label: label) }
            throw StepFailure(message: "\(path) (\(label)) was killed by signal \(signal). Last output:\n" + tail.text)
        case .disconnected(let reason):
            try Task.checkCancellation()
            log.write(label, "connection lost (\(reason)); waiting for the guest to come back")
            events(.message("\(label): connection lost; waiting for the guest (a reboot?)"))
            let newBootID = try await reconnectedBootID(label: label)
            if newBootID == bootID {
                // The connection may have raced a shutdown that is still under way.
                guard try await isShuttingDown() else {
                    throw StepFailure(message: "\(path) (\(label)): the SSH connection was lost but the guest did not restart (same boot ID); the step's outcome is unknown. Last output:\n" + tail.text)
                }
                try await waitForNewBoot(after: bootID, label: label)
            } else {
                log.write(label, "the guest restarted (boot ID \(bootID) → \(newBootID)); continuing with the next step")
                events(.message("\(label): the guest restarted; reconnected"))
            }
            log.packerDebug(label, "[INFO] RPC client: Communicator ended with: 2300218")
            await remove(remote, label: label)
        }
    }

    /// `rm -f` of a script Kiln placed (Packer's cleanup of its remote file). It never fails the step: a script
    /// that is not removed now (the guest going down after the step, say) is removed by the final cleanup.
    private func remove(_ remote: String, label: String) async {
        guard let result = try? await session.exec("rm -f \(ShellQuote.quote(remote))"), result.succeeded else {
            log.write(label, "could not remove \(remote) now; the final cleanup will")
            return
        }
        connection?.removed(remote)
    }

    private func currentBootID() async throws -> String {
        try await session.run("cat /proc/sys/kernel/random/boot_id").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// After a disconnect: a renewed session and the boot ID read on it. A login can reach the old boot's sshd
    /// while the guest goes down, and that session closes under the read; so the read is retried on a new
    /// session until the guest answers or the SSH timeout ends. Waiting for a login is `renew`'s own (it fails
    /// when the SSH timeout ends or the VM stops).
    private func reconnectedBootID(label: String) async throws -> String {
        guard let connection else { throw KilnError(.invalidState, "no guest connection") }
        let clock = ContinuousClock()
        let start = clock.now
        while true {
            try await connection.renew()
            do {
                return try await currentBootID()
            } catch {
                try Task.checkCancellation()
                guard clock.now - start < connection.reconnectTimeout else {
                    throw StepFailure(message: "\(label): the guest accepted SSH logins but did not answer a command within \(DurationText.format(connection.reconnectTimeout)) after the connection was lost; last error: \(error)")
                }
                log.write(label, "reconnected, but the session ended before the guest answered (\(error)); the guest may be going down, retrying")
                try await Task.sleep(for: .seconds(2))
            }
        }
    }

    /// True when systemd is taking the guest down (or the connection is already gone).
    private func isShuttingDown() async throws -> Bool {
        let output = OutputCollector()
        guard let result = try? await session.exec("systemctl is-system-running 2>/dev/null || true", output: { output.append($0) }),
              result.exitCode != nil else { return true }
        return output.stdoutText.contains("stopping")
    }

    /// `sudo reboot` and `shutdown -r now` return before the guest goes down: a step that exited 0 may have left
    /// a restart under way. If so, wait for the guest to come back with a new boot ID before the next step.
    private func settle(afterBootID bootID: String, label: String) async throws {
        guard try await isShuttingDown() else { return }
        log.write(label, "the guest is restarting; waiting for it to come back")
        events(.message("\(label): the guest is restarting; waiting for SSH"))
        try await waitForNewBoot(after: bootID, label: label)
    }

    private func waitForNewBoot(after bootID: String, label: String) async throws {
        guard let connection else { throw KilnError(.invalidState, "no guest connection") }
        let clock = ContinuousClock()
        let start = clock.now
        while true {
            let newBootID = try await reconnectedBootID(label: label)
            if newBootID != bootID {
                log.write(label, "the guest restarted (boot ID \(bootID) → \(newBootID)); continuing with the next step")
                events(.message("\(label): the guest restarted; reconnected"))
                return
            }
            guard clock.now - start < connection.reconnectTimeout else {
                throw StepFailure(message: "\(label): the guest began to restart but did not come back within \(DurationText.format(connection.reconnectTimeout))")
            }
            try await Task.sleep(for: .seconds(2))
        }
    }
}

/// The last N lines of a step's output, for failure messages.
final class OutputTail: @unchecked Sendable {
    private let limit: Int
    private var lines: [String] = []
    private let lock = NSLock()

    init(lines: Int) { limit = lines }

    func append(_ line: String) {
        lock.lock()
        lines.append(line)
        if lines.count > limit { lines.removeFirst(lines.count - limit) }
        lock.unlock()
    }

    var text: String {
        lock.lock()
        defer { lock.unlock() }
        return lines.isEmpty ? "  (no output)" : lines.map { "  " + $0 }.joined(separator: "\n")
    }
}
