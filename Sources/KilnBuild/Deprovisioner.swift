import KilnSSH
import KilnSupport

/// The last step of a Linux build: the template's /tmp/DeprovisioningScript.sh if a customizer wrote one, else
/// AIB's waagent command; then the build user, its key and home and the SSH host keys are removed whatever ran,
/// free space is trimmed so exported disks stay small, and the guest powers off.
enum LinuxDeprovisioner {
    static let overrideScript = "/tmp/DeprovisioningScript.sh"

    /// AIB's default, preferring waagent on PATH.
    static let defaultCommand = """
    WAAGENT=/usr/sbin/waagent
    waagent -version 1> /dev/null 2>&1
    if [ $? -eq 0 ]; then WAAGENT=waagent; fi
    $WAAGENT -force -deprovision+user && export HISTSIZE=0 && sync
    """

    static func deprovisionCommand(hasOverride: Bool) -> String {
        hasOverride ? "sudo -n /bin/sh \(overrideScript)" : "sudo -n /bin/sh -c \(ShellQuote.quote(defaultCommand))"
    }

    /// Runs detached (setsid) as root, so it survives the end of the SSH session it removes.
    static func finalCleanup(username: String) -> String {
        let user = ShellQuote.quote(username)
        let script = """
        sleep 1
        fstrim -a >/dev/null 2>&1 || true
        pkill -KILL -u \(user) >/dev/null 2>&1 || true
        userdel -f -r \(user) >/dev/null 2>&1 || userdel -f \(user) >/dev/null 2>&1 || true
        rm -rf /home/\(username)
        rm -f /etc/sudoers.d/90-cloud-init-users /etc/sudoers.d/90-kiln-build-user
        rm -f /etc/ssh/ssh_host_*
        sync
        systemctl poweroff || poweroff
        """
        return "sudo -n setsid -f /bin/sh -c \(ShellQuote.quote(script)) </dev/null >/dev/null 2>&1"
    }
}
