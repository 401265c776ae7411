import CGuestfs
import CKilnShim
import Foundation
import KilnSupport

/// What libguestfs inspection found in a disk.
public struct GuestInspection: Sendable, Equatable {
    public var root: String
    /// "linux" or "windows".
    public var type: String
    public var distro: String
    public var productName: String
    public var majorVersion: Int
    public var minorVersion: Int
    /// Mount points, shortest first (mount in this order).
    public var mountpoints: [(mountpoint: String, device: String)]

    public static func == (lhs: GuestInspection, rhs: GuestInspection) -> Bool {
        lhs.root == rhs.root && lhs.type == rhs.type && lhs.distro == rhs.distro && lhs.productName == rhs.productName
            && lhs.majorVersion == rhs.majorVersion && lhs.minorVersion == rhs.minorVersion
            && lhs.mountpoints.map(\.mountpoint) == rhs.mountpoints.map(\.mountpoint)
    }
}

extension GuestfsHandle {
    /// Adds a disk with an explicit format (never probed: CVE-2010-3851).
    public func addDrive(_ path: String, format: String, readOnly: Bool) throws(KilnError) {
        let h = try open()
        let status = format.withCString { formatPointer in
            var options = guestfs_add_drive_opts_argv()
            options.bitmask = kiln_guestfs_add_drive_opts_format_bitmask | kiln_guestfs_add_drive_opts_readonly_bitmask
            options.format = formatPointer
            options.readonly = readOnly ? 1 : 0
            return guestfs_add_drive_opts_argv(h, path, &options)
        }
        guard status == 0 else { throw error("add_drive \(path)") }
    }

    /// Backend settings such as "force_tcg", which must follow Kiln's accelerator decision or the appliance hangs
    /// where KVM does.
    public func setBackendSettings(_ settings: [String]) throws(KilnError) {
        let h = try open()
        let status = withCStringArray(settings) { guestfs_set_backend_settings(h, $0) }
        guard status == 0 else { throw error("set_backend_settings") }
    }

    public func setBackend(_ backend: String) throws(KilnError) {
        guard guestfs_set_backend(try open(), backend) == 0 else { throw error("set_backend") }
    }

    /// Boots the appliance (~25 s under TCG). Blocking: call it off the cooperative pool.
    public func launch() throws(KilnError) {
        guard guestfs_launch(try open()) == 0 else { throw error("launch") }
    }

    public func inspectOperatingSystems() throws(KilnError) -> [GuestInspection] {
        let h = try open()
        guard let roots = guestfs_inspect_os(h) else { throw error("inspect_os") }
        let rootNames = takeStringList(roots)
        var results: [GuestInspection] = []
        for root in rootNames {
            let type = takeString(guestfs_inspect_get_type(h, root)) ?? "unknown"
            let distro = takeString(guestfs_inspect_get_distro(h, root)) ?? "unknown"
            let product = takeString(guestfs_inspect_get_product_name(h, root)) ?? "unknown"
            let major = Int(guestfs_inspect_get_major_version(h, root))
            let minor = Int(guestfs_inspect_get_minor_version(h, root))
            guard let pairs = guestfs_inspect_get_mountpoints(h, root) else { throw error("inspect_get_mountpoints") }
            let flat = takeStringList(pairs)
            var mounts: [(String, String)] = []
            var index = 0
            while index + 1 < flat.count {
                mounts.append((flat[index], flat[index + 1]))
                index += 2
            }
            mounts.sort { $0.0.count < $1.0.count }
            results.append(GuestInspection(root: root, type: type, distro: distro, productName: product,
                                           majorVersion: major, minorVersion: minor, mountpoints: mounts))
        }
        return results
    }

    /// Mounts an inspected guest's file systems at their mount points.
    public func mountAll(_ inspection: GuestInspection, readOnly: Bool) throws(KilnError) {
        let h = try open()
        for (mountpoint, device) in inspection.mountpoints {
            let status = readOnly ? guestfs_mount_ro(h, device, mountpoint) : guestfs_mount(h, device, mountpoint)
            // A mount point that fails (swap listed in fstab, say) does not stop the rest.
            if status != 0 && mountpoint == "/" { throw error("mount \(device) on /") }
        }
    }

    /// Creates a mount point in the appliance before anything is mounted, so several disks can be mounted side by
    /// side (`/a`, `/b`).
    public func makeMountPoint(_ path: String) throws(KilnError) {
        guard guestfs_mkmountpoint(try open(), path) == 0 else { throw error("mkmountpoint \(path)") }
    }

    public func mountReadOnly(_ device: String, at mountpoint: String) throws(KilnError) {
        guard guestfs_mount_ro(try open(), device, mountpoint) == 0 else { throw error("mount \(device) on \(mountpoint)") }
    }

    public func exists(_ path: String) throws(KilnError) -> Bool {
        let status = guestfs_exists(try open(), path)
        guard status >= 0 else { throw error("exists \(path)") }
        return status == 1
    }

    /// Whether `path` is a symbolic link (not followed; a mask's link to /dev/null dangles in the appliance).
    public func isSymlink(_ path: String) throws(KilnError) -> Bool {
        let status = guestfs_is_symlink(try open(), path)
        guard status >= 0 else { throw error("is-symlink \(path)") }
        return status == 1
    }

    /// The names in a directory (without `.` and `..`).
    public func ls(_ directory: String) throws(KilnError) -> [String] {
        guard let names = guestfs_ls(try open(), directory) else { throw error("ls \(directory)") }
        return takeStringList(names)
    }

    /// The path as the file system spells it, matched without regard to case (NTFS names from a Windows path).
    /// Components that do not exist yet keep the given spelling.
    public func caseSensitivePath(_ path: String) throws(KilnError) -> String {
        guard let resolved = takeString(guestfs_case_sensitive_path(try open(), path)) else { throw error("case_sensitive_path \(path)") }
        return resolved
    }

    public func readFile(_ path: String) throws(KilnError) -> [UInt8] {
        var size = 0
        guard let content = guestfs_read_file(try open(), path, &size) else { throw error("read_file \(path)") }
        defer { free(content) }
        return content.withMemoryRebound(to: UInt8.self, capacity: size) { Array(UnsafeBufferPointer(start: $0, count: size)) }
    }

    public func writeFile(_ path: String, _ content: [UInt8], append: Bool = false) throws(KilnError) {
        let h = try open()
        let status = content.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { chars in
                append ? guestfs_write_append(h, path, chars.baseAddress, chars.count)
                       : guestfs_write(h, path, chars.baseAddress, chars.count)
            }
        }
        guard status == 0 else { throw error("write \(path)") }
    }

    public func mkdirP(_ path: String) throws(KilnError) {
        guard guestfs_mkdir_p(try open(), path) == 0 else { throw error("mkdir_p \(path)") }
    }

    public func chmod(_ mode: Int32, _ path: String) throws(KilnError) {
        guard guestfs_chmod(try open(), mode, path) == 0 else { throw error("chmod \(path)") }
    }

    public func chown(_ uid: Int32, _ gid: Int32, _ path: String) throws(KilnError) {
        guard guestfs_chown(try open(), uid, gid, path) == 0 else { throw error("chown \(path)") }
    }

    public func removeFile(_ path: String) throws(KilnError) {
        guard guestfs_rm_f(try open(), path) == 0 else { throw error("rm_f \(path)") }
    }

    /// Runs a program from the guest's own file system (chrooted), returning its output.
    public func command(_ arguments: [String]) throws(KilnError) -> String {
        let h = try open()
        let output = withCStringArray(arguments) { guestfs_command(h, $0) }
        guard let output else { throw error("command \(arguments.joined(separator: " "))") }
        return takeString(output) ?? ""
    }

    /// Unmounts, syncs and stops the appliance so that every write reaches the disk.
    public func finish() throws(KilnError) {
        let h = try open()
        _ = guestfs_umount_all(h)
        guard guestfs_sync(h) == 0 else { throw error("sync") }
        guard guestfs_shutdown(h) == 0 else { throw error("shutdown") }
    }
}

private func takeString(_ pointer: UnsafeMutablePointer<CChar>?) -> String? {
    guard let pointer else { return nil }
    defer { free(pointer) }
    return String(decoding: UnsafeRawBufferPointer(start: pointer, count: strlen(pointer)), as: UTF8.self)
}

private func takeStringList(_ list: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> [String] {
    var strings: [String] = []
    var index = 0
    while let item = list[index] {
        strings.append(String(decoding: UnsafeRawBufferPointer(start: item, count: strlen(item)), as: UTF8.self))
        free(item)
        index += 1
    }
    free(list)
    return strings
}

/// A NULL-terminated `char **` for the duration of `body`.
private func withCStringArray<T>(_ strings: [String], _ body: (UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> T) -> T {
    var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    pointers.append(nil)
    defer { for pointer in pointers { free(pointer) } }
    return pointers.withUnsafeMutableBufferPointer { buffer in
        // The buffer is never empty: it ends with the NULL terminator.
        body(buffer.baseAddress.unsafelyUnwrapped)
    }
}
