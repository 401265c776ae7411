import KilnGuest
import KilnSupport

/// Powering the guest off: waiting for a guest that powers itself off, or asking it to (and forcing it after a while).
extension BuildMachine {
    /// Waits for a guest that is powering itself off. False if it is still running after `timeout`.
    public func waitForStop(timeout: Duration) async -> Bool {
        guard let domain else { return true }
        let clock = ContinuousClock()
        let start = clock.now
        while clock.now - start < timeout {
            if !(await domain.state().isActive) {
                events("the guest powered off after \(DurationText.format(clock.now - start))")
                return true
            }
            try? await Task.sleep(for: .milliseconds(500))
        }
        return false
    }

    /// Asks the guest to power off (through `session` if given, else ACPI), waits up to `timeout`, then forces it.
    /// Returns true when the guest stopped by itself.
    @discardableResult
    public func shutdown(session: (any GuestSession)?, timeout: Duration) async -> Bool {
        guard let domain, await domain.state().isActive else { return true }
        if let session {
            events("asking the guest to power off")
            _ = try? await session.exec("sudo -n systemctl poweroff || sudo -n poweroff || sudo -n shutdown -h now")
            await session.close()
        } else {
            events("asking the guest to power off (ACPI)")
            try? await domain.requestShutdown()
        }
        let clock = ContinuousClock()
        let start = clock.now
        var lastACPI = start
        while clock.now - start < timeout {
            if !(await domain.state().isActive) {
                events("the guest powered off after \(DurationText.format(clock.now - start))")
                return true
            }
            // ACPI may arrive before the guest listens: repeat it now and then.
            if clock.now - lastACPI > .seconds(20) {
                try? await domain.requestShutdown()
                lastACPI = clock.now
            }
            try? await Task.sleep(for: .milliseconds(500))
        }
        events("the guest did not power off within \(DurationText.format(timeout)); forcing it off")
        await domain.destroy()
        return false
    }
}
