import Foundation

public enum FileSize {
    /// The bytes a file occupies on disk (its allocated blocks): sparse files count only what they hold.
    public static func allocatedBytes(_ path: String) -> UInt64 {
        var info = stat()
        guard stat(path, &info) == 0 else { return 0 }
        return UInt64(info.st_blocks) * 512
    }

    /// The file's length in bytes (0 if it cannot be read).
    public static func bytes(_ path: String) -> UInt64 {
        var info = stat()
        guard stat(path, &info) == 0 else { return 0 }
        return UInt64(info.st_size)
    }
}
