import Foundation
import KilnDigest
import KilnSupport

/// The sha256 of source images, remembered by path, size, modification time (to the nanosecond), inode and device,
/// so a source that names its volume on a remote host is read once, not before every build (hashing a 30 GiB image
/// takes minutes). A file that changed while it was read is not remembered. Kept in `<state>/cache/source-sha256.json`;
/// two Kiln processes writing at once may lose an entry, never record a wrong one.
public struct SourceDigests: Sendable {
    public let path: String

    public init(state: StateDirectory) {
        path = state.cachePath + "/source-sha256.json"
    }

    public init(path: String) {
        self.path = path
    }

    struct Identity: Codable, Equatable {
        var size: Int64
        var modifiedNanoseconds: Int64
        var inode: UInt64
        var device: UInt64

        init?(file: String) {
            var info = stat()
            guard stat(file, &info) == 0 else { return nil }
            size = Int64(info.st_size)
            modifiedNanoseconds = Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec)
            inode = UInt64(info.st_ino)
            device = UInt64(info.st_dev)
        }
    }

    struct Entry: Codable {
        var identity: Identity
        var sha256: String
    }

    /// The file's sha256, and whether it was remembered (not read).
    public func sha256(ofFile file: String) throws(KilnError) -> (hex: String, remembered: Bool) {
        let key = URL(fileURLWithPath: file).standardizedFileURL.path
        var entries = RecordFile.read([String: Entry].self, from: path) ?? [:]
        let before = Identity(file: key)
        if let before, let entry = entries[key], entry.identity == before {
            return (entry.sha256, true)
        }
        let hex = try SHA256Digest.hex(ofFile: key)
        guard let before, Identity(file: key) == before else { return (hex, false) }
        // Entries of files that are gone or changed go as new ones are written.
        entries = entries.filter { Identity(file: $0.key) == $0.value.identity }
        entries[key] = Entry(identity: before, sha256: hex)
        try? PrivateDirectory.createPath((path as NSString).deletingLastPathComponent)
        try? RecordFile.write(entries, to: path)
        return (hex, false)
    }
}
