import KilnGuest
import KilnSupport

/// The last step of a build, as AIB's hidden last customizer: it generalizes the guest (waagent on Linux,
/// Sysprep on Windows, or the template's own script), after which the guest powers off.
public protocol Deprovisioner: Sendable {
    func run() async throws
}

/// The last step of a Linux build, as AIB's hidden last customizer: AIB writes its default deprovisioning
/// script to /tmp/DeprovisioningScript.sh before the template's customizers run (so that one of them can
/// replace it), and at the end prints it and runs it with `sh` (customization.log excerpts in
/// docs/aib-customizers.md). Kiln does the same: the script is written right after boot, written again at the end
/// if a restart emptied /tmp since, then run as root, followed by the final cleanup.
/// Whatever ran, the build user, its key and home and the SSH host keys are removed, the copy of the provisioning
/// media's `ovf-env.xml` that cloud-init's Azure datasource keeps for the agent (it holds the build user and key;
/// the agent's deprovisioning deletes it, a template's own script may not), Kiln's DHCP leases for the agent, the
/// scripts Kiln put in the guest too, free space is trimmed so exported disks stay small, and the guest powers off.
public struct LinuxDeprovisioner: Deprovisioner {
    let connection: GuestConnection
    let username: String
    /// What the builder's provisioning left in the guest for the agents (a DHCP lease, cloud-init's copy of
    /// ovf-env.xml): the final cleanup removes it.
    let provisioningFiles: [String]
    let log: any BuildLog
    let events: @Sendable (ProgressEvent) -> Void

    public init(connection: GuestConnection, username: String, provisioningFiles: [String], log: any BuildLog,
                events: @escaping @Sendable (ProgressEvent) -> Void) {
        self.connection = connection
        self.username = username
        self.provisioningFiles = provisioningFiles
        self.log = log
        self.events = events
    }

    public static let scriptPath = "/tmp/DeprovisioningScript.sh"

    /// AIB's default, preferring waagent on PATH.
    static let defaultCommand = """
    WAAGENT=/usr/sbin/waagent
    waagent -version 1> /dev/null 2>&1
    if [ $? -eq 0 ]; then WAAGENT=waagent; fi
    $WAAGENT -force -deprovision+user && export HISTSIZE=0 && sync
    """

    /// What Kiln writes to `scriptPath` after boot.
    static let defaultScript = defaultCommand + "\n"

    /// Prints the script, then runs it as root with `sh`; when it succeeds, the same root shell starts the final
    /// cleanup, detached (setsid) so that it survives the end of the SSH session it removes. It cannot be a
    /// command of its own afterwards: `waagent -deprovision+user` deletes the build user when the image was
    /// provisioned from ovf-env.xml, and sudo then refuses a user that no longer exists.
    static func command(username: String, placedFiles: [String], provisioningFiles: [String] = []) -> String {
        let cleanup = cleanupScript(username: username, placedFiles: placedFiles, provisioningFiles: provisioningFiles)
        let root = "sh \(scriptPath) && setsid -f /bin/sh -c \(ShellQuote.quote(cleanup)) </dev/null >/dev/null 2>&1"
        return "cat \(scriptPath); \(StepRunner.packerEnvironment)sudo -E sh -c \(ShellQuote.quote(root))"
    }

    /// What the final cleanup runs as root.
    static func cleanupScript(username: String, placedFiles: [String], provisioningFiles: [String] = []) -> String {
        let user = ShellQuote.quote(username)
        let files = ([scriptPath] + placedFiles).map(ShellQuote.quote).joined(separator: " ")
        return """
        sleep 1
        rm -f \(files)
        fstrim -a >/dev/null 2>&1 || true
        pkill -KILL -u \(user) >/dev/null 2>&1 || true
        userdel -f -r \(user) >/dev/null 2>&1 || userdel -f \(user) >/dev/null 2>&1 || true
        rm -rf /home/\(username)
        rm -f /etc/sudoers.d/90-cloud-init-users /etc/sudoers.d/90-kiln-build-user
        rm -f \(provisioningFiles.map(ShellQuote.quoteIfNeeded).joined(separator: " "))
        rm -f /etc/ssh/ssh_host_*
        sync
        systemctl poweroff || poweroff
        """
    }

    /// Writes AIB's default script to `scriptPath`, where a customizer may replace it.
    public static func writeDefaultScript(_ session: any GuestSession) async throws {
        let written = try await session.exec("cat > \(scriptPath)", stdin: Array(defaultScript.utf8)) { _ in }
        guard written.succeeded else {
            throw StepFailure(message: "could not write AIB's default \(scriptPath) in the guest: \(written)")
        }
    }

    public func run() async throws {
        let scriptPath = Self.scriptPath
        log.packerDebug("deprovision", "[INFO] (telemetry) Starting provisioner shell")
        let current = OutputCollector()
        if try await !connection.session.exec("cat \(scriptPath)", output: { current.append($0) }).succeeded {
            // Most distributions empty /tmp at boot (systemd-tmpfiles), so a step that rebooted the guest took the
            // script written after the first boot with it; no customizer wrote its own since.
            log.write("deprovision", "\(scriptPath) is gone (a restart empties /tmp); writing AIB's default again")
            try await Self.writeDefaultScript(connection.session)
        }
        log.write("deprovision", current.stdoutText.isEmpty || current.stdoutText == Self.defaultScript
                  ? "running AIB's default deprovisioning (\(scriptPath))"
                  : "running the template's \(scriptPath)")
        let command = Self.command(username: username, placedFiles: connection.placedFiles, provisioningFiles: provisioningFiles)
        log.write("deprovision", "command: cat \(scriptPath); sudo -E sh \(scriptPath), then Kiln's final cleanup")
        log.packerDebug("deprovision", "[DEBUG] starting remote command: \(command)")
        let (result, tail) = try await StepOutput.exec(command, on: connection.session, stdin: [], label: "deprovision", log: log, events: events)
        log.write("deprovision", "\(result)")
        guard result.succeeded else {
            throw StepFailure(message: "deprovisioning (\(scriptPath)) failed with \(result). Last output:\n\(tail.text)")
        }
        log.packerDebug("deprovision", "[INFO] (telemetry) ending shell")
    }
}
