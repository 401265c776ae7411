import Foundation

public enum AtomicFile {
    /// Moves `source` over `destination` with rename(2): readers see the old file or the new one, never a part.
    public static func rename(_ source: String, to destination: String) throws(KilnError) {
        guard Foundation.rename(source, destination) == 0 else {
            throw KilnError(.io, "cannot move \(source) to \(destination): \(String(cString: strerror(errno)))")
        }
    }

    /// Writes `data` to a temporary file beside `path`, then renames it into place. `permissions` apply from the
    /// file's creation (a secret is never readable by others, not even briefly).
    public static func write(_ data: Data, to path: String, permissions: Int? = nil) throws(KilnError) {
        let temporary = path + ".tmp-\(getpid())"
        guard FileManager.default.createFile(atPath: temporary, contents: data,
                                             attributes: permissions.map { [.posixPermissions: $0] }) else {
            throw KilnError(.io, "cannot write \(temporary)")
        }
        do throws(KilnError) {
            try rename(temporary, to: path)
        } catch {
            try? FileManager.default.removeItem(atPath: temporary)
            throw error
        }
    }
}
