import CLibvirt
import KilnSupport

/// Thin Swift over libvirt's C API: errors are read on the calling thread right after the failing call.
public enum Libvirt {
    /// The libvirt library version, e.g. "9.0.0" (virGetVersion).
    public static func libraryVersion() throws(KilnError) -> String {
        var version: UInt = 0
        guard virGetVersion(&version, nil, nil) == 0 else {
            throw KilnError(.external, "libvirt version query failed: \(lastErrorMessage())")
        }
        return versionText(version)
    }

    /// libvirt's version numbers (library, daemon, hypervisor) as text: 9000000 is "9.0.0".
    static func versionText(_ version: UInt) -> String {
        "\(version / 1_000_000).\((version / 1000) % 1000).\(version % 1000)"
    }

    /// The last libvirt error on this thread as a KilnError: its code says what callers tell apart (a domain that
    /// exists already, a host forwarding rule QEMU could not set up, a storage pool or volume that does not exist);
    /// libvirt's text stays in the message.
    public static func lastError(_ what: String) -> KilnError {
        let message = lastErrorMessage()
        let errorCode = virGetLastError().map { UInt32(bitPattern: $0.pointee.code) }
        let exists = [VIR_ERR_DOM_EXIST.rawValue, VIR_ERR_STORAGE_VOL_EXIST.rawValue].contains(errorCode)
        let missing = [VIR_ERR_NO_STORAGE_POOL.rawValue, VIR_ERR_NO_STORAGE_VOL.rawValue].contains(errorCode)
        let code: KilnError.Code
        if exists || message.contains("already exists") || message.contains("already defined") {
            code = .alreadyExists
        } else if missing {
            code = .notFound
        } else if message.contains("host forwarding") || message.contains("hostfwd") {
            code = .portUnavailable
        } else {
            code = .external
        }
        return KilnError(code, "\(what): \(message)")
    }

    /// The message of the last libvirt error on this thread.
    public static func lastErrorMessage() -> String {
        guard let error = virGetLastError(), let message = error.pointee.message else { return "unknown libvirt error" }
        return String(cString: message)
    }
}
