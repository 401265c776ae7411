import Foundation

public enum AtomicFile {
    /// Moves `source` over `destination` with rename(2): readers see the old file or the new one, never a part.
    public static func rename(_ source: String, to destination: String) throws(KilnError) {
        guard Foundation.rename(source, destination) == 0 else {
            throw KilnError(.io, "cannot move \(source) to \(destination): \(String(cString: strerror(errno)))")
        }
    }

    /// Writes `data` to a new temporary file beside `path`, then renames it into place. `permissions` apply from the
    /// file's creation: it is opened with that mode (FileManager.createFile writes first and sets the mode after, a
    /// moment in which a secret is readable by others). The temporary file is created exclusively and never through
    /// a symbolic link; a link at `path` itself is replaced, not followed. `synchronized` flushes the file to disk
    /// before the rename, so a crash leaves the old file or the whole new one.
    public static func write(_ data: Data, to path: String, permissions: Int? = nil, synchronized: Bool = false) throws(KilnError) {
        let (temporary, descriptor) = try createTemporary(beside: path, mode: permissions.map { mode_t($0) } ?? 0o666)
        do throws(KilnError) {
            defer { close(descriptor) }
            // The umask may have narrowed the mode asked for; an explicit one is exact, as FileManager made it.
            if let permissions, fchmod(descriptor, mode_t(permissions)) != 0 {
                throw KilnError(.io, "cannot set the mode of \(temporary): \(String(cString: strerror(errno)))")
            }
            try writeAll(data, to: descriptor, path: temporary)
            if synchronized && fsync(descriptor) != 0 {
                throw KilnError(.io, "cannot flush \(temporary): \(String(cString: strerror(errno)))")
            }
        } catch {
            unlink(temporary)
            throw error
        }
        do throws(KilnError) {
            try rename(temporary, to: path)
        } catch {
            unlink(temporary)
            throw error
        }
    }

    /// Opens a new file named `<path>.tmp-<pid>-<random>`: O_EXCL, so a file or link someone placed under that
    /// name is never written through (another name is tried instead).
    static func createTemporary(beside path: String, mode: mode_t) throws(KilnError) -> (String, Int32) {
        for _ in 0..<8 {
            let temporary = path + ".tmp-\(getpid())-" + String(format: "%08x", UInt32.random(in: 0...UInt32.max))
            let descriptor = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
            if descriptor >= 0 { return (temporary, descriptor) }
            guard errno == EEXIST else {
                throw KilnError(.io, "cannot create \(temporary): \(String(cString: strerror(errno)))")
            }
        }
        throw KilnError(.io, "cannot create a temporary file beside \(path): every name tried exists")
    }

    static func writeAll(_ data: Data, to descriptor: Int32, path: String) throws(KilnError) {
        let failure: Int32? = data.withUnsafeBytes { buffer in
            guard let base = buffer.baseAddress else { return nil }
            var offset = 0
            while offset < buffer.count {
                let written = Foundation.write(descriptor, base + offset, buffer.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    return errno
                }
                offset += written
            }
            return nil
        }
        if let failure {
            throw KilnError(.io, "cannot write \(path): \(String(cString: strerror(failure)))")
        }
    }
}

/// A file that holds a secret (a private key, a password, a script with one inside): mode 0600 from its first byte,
/// replaced whole (see ``AtomicFile/write(_:to:permissions:synchronized:)``) and flushed to disk before it is used.
public enum SecretFile {
    public static func write(_ data: Data, to path: String) throws(KilnError) {
        try AtomicFile.write(data, to: path, permissions: 0o600, synchronized: true)
    }
}
