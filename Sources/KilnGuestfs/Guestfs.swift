import CGuestfs
import CKilnShim
import KilnSupport

/// A libguestfs handle. Every call checks its return code and reads the handle's last error at once.
/// Not thread-safe by itself: use one handle from one thread (libguestfs locks per handle, but calls block).
public final class GuestfsHandle {
    private var handle: OpaquePointer?

    /// Creates a handle without reading LIBGUESTFS_* environment variables, so behaviour is what Kiln sets.
    public init(readEnvironment: Bool = false) throws(KilnError) {
        var flags: UInt32 = UInt32(kiln_guestfs_create_flags_no_close_on_exit)
        if !readEnvironment { flags |= UInt32(kiln_guestfs_create_flags_no_environment) }
        guard let handle = kiln_guestfs_create_flags(flags) else {
            throw KilnError(.external, "libguestfs could not create a handle")
        }
        guestfs_set_error_handler(handle, nil, nil)
        self.handle = handle
    }

    deinit { close() }

    /// Closes the handle (shutting the appliance down if launched). Idempotent.
    public func close() {
        guard let handle else { return }
        guestfs_close(handle)
        self.handle = nil
    }

    public var isOpen: Bool { handle != nil }

    /// The libguestfs library version, e.g. "1.48.6".
    public func libraryVersion() throws(KilnError) -> String {
        let h = try open()
        guard let version = guestfs_version(h) else { throw error("version") }
        defer { guestfs_free_version(version) }
        return "\(version.pointee.major).\(version.pointee.minor).\(version.pointee.release)"
    }

    func open() throws(KilnError) -> OpaquePointer {
        guard let handle else { throw KilnError(.invalidState, "libguestfs handle is closed") }
        return handle
    }

    func error(_ call: String) -> KilnError {
        let message = handle.flatMap { guestfs_last_error($0) }.map { String(cString: $0) } ?? "unknown error"
        return KilnError(.external, "libguestfs \(call) failed: \(message)")
    }
}
