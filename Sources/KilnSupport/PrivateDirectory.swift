import Foundation

/// Directories only this user can enter (mode 0700), made so that another local user cannot slip a symbolic link
/// or a directory of theirs in their place. Everything is checked with lstat(2): a symbolic link is never followed.
public enum PrivateDirectory {
    /// Makes `path` (mode 0700) unless it exists, then checks it: a real directory, owned by this user, with no
    /// group or other permission bits. Anything else is refused; nothing is changed on it.
    public static func make(_ path: String) throws(KilnError) {
        if mkdir(path, 0o700) != 0 && errno != EEXIST {
            throw KilnError(.io, "cannot create the private directory \(path): \(String(cString: strerror(errno)))")
        }
        try check(path)
    }

    /// Checks that `path` is a real directory (not a symbolic link) owned by this user, with mode 0700 or narrower.
    public static func check(_ path: String) throws(KilnError) {
        var info = stat()
        guard lstat(path, &info) == 0 else {
            throw KilnError(.io, "cannot inspect the private directory \(path): \(String(cString: strerror(errno)))")
        }
        let expected = "a directory owned by uid \(getuid()) with mode 0700"
        if let problem = problem(info) {
            throw KilnError(.invalidState, "refusing to use \(path): expected \(expected), found \(problem); remove it or fix it")
        }
        guard info.st_mode & 0o077 == 0 else {
            let mode = String(info.st_mode & 0o7777, radix: 8)
            throw KilnError(.invalidState, "refusing to use \(path): expected \(expected), found mode 0\(mode) (other users can reach it); chmod 700 it or remove it")
        }
    }

    /// Creates `path` afresh with mkdir(2), mode 0700: never a directory that was already there. One that is
    /// (a stale directory of a process that died, whose pid this one reuses) is removed first if it is this
    /// user's real directory; anything else there is refused.
    public static func makeFresh(_ path: String) throws(KilnError) {
        if mkdir(path, 0o700) == 0 { return try check(path) }
        guard errno == EEXIST else {
            throw KilnError(.io, "cannot create \(path): \(String(cString: strerror(errno)))")
        }
        try removeIfOurs(path)
        guard mkdir(path, 0o700) == 0 else {
            throw KilnError(.io, "cannot create \(path) after removing a stale one: \(String(cString: strerror(errno)))")
        }
        try check(path)
    }

    /// Removes `path` if it is a real directory owned by this user (never following a symbolic link); refuses
    /// anything else.
    public static func removeIfOurs(_ path: String) throws(KilnError) {
        var info = stat()
        guard lstat(path, &info) == 0 else {
            if errno == ENOENT { return }
            throw KilnError(.io, "cannot inspect \(path): \(String(cString: strerror(errno)))")
        }
        if let problem = problem(info) {
            throw KilnError(.invalidState, "refusing to remove \(path): expected a directory owned by uid \(getuid()), found \(problem)")
        }
        // FileManager walks the tree physically: links inside are removed, not followed.
        do {
            try FileManager.default.removeItem(atPath: path)
        } catch {
            throw KilnError(.io, "cannot remove \(path): \(error.localizedDescription)")
        }
    }

    /// Creates `path` and any missing parents, each new one with mode 0700 (umask aside); directories that
    /// already exist are left as they are. For the state directory and the run directories below it: logs, keys
    /// and disks inside are then out of other users' reach, whatever the files' own modes.
    public static func createPath(_ path: String) throws(KilnError) {
        var missing: [String] = []
        var current = path
        var info = stat()
        while !current.isEmpty && current != "/" && stat(current, &info) != 0 {
            missing.append(current)
            current = (current as NSString).deletingLastPathComponent
        }
        for directory in missing.reversed() {
            if mkdir(directory, 0o700) != 0 && errno != EEXIST {
                throw KilnError(.io, "cannot create the directory \(directory): \(String(cString: strerror(errno)))")
            }
        }
        guard stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
            throw KilnError(.io, "cannot create the directory \(path): something other than a directory is there")
        }
    }

    /// A new directory in the temporary directory (`$TMPDIR`, else /tmp) named `<prefix>` and six random characters,
    /// made by mkdtemp(3): mode 0700, and never one that was already there (a name guessed in /tmp, such as
    /// `<prefix><pid>`, could have been made first by another user, or be a link).
    public static func makeTemporary(prefix: String) throws(KilnError) -> String {
        var template = Array(((NSTemporaryDirectory() as NSString).appendingPathComponent(prefix + "XXXXXX")).utf8CString)
        guard let made = mkdtemp(&template) else {
            throw KilnError(.io, "cannot create a temporary directory \(prefix)XXXXXX in \(NSTemporaryDirectory()): \(String(cString: strerror(errno)))")
        }
        return String(cString: made)
    }

    /// What is wrong with an lstat result for a private directory, or nil.
    static func problem(_ info: stat) -> String? {
        switch info.st_mode & S_IFMT {
        case S_IFDIR: break
        case S_IFLNK: return "a symbolic link"
        default: return "something other than a directory"
        }
        guard info.st_uid == getuid() else { return "a directory owned by uid \(info.st_uid)" }
        return nil
    }
}

/// Kiln's per-user runtime directory, for what lives as long as a process (the embedded libvirt roots, sockets):
/// `$XDG_RUNTIME_DIR/kiln` when XDG_RUNTIME_DIR names a directory of this user's, else `/tmp/kiln-<uid>`. Either
/// is made mode 0700 and checked (``PrivateDirectory/make(_:)``), so a name another user guessed in /tmp is refused,
/// never used.
public enum RuntimeDirectory {
    /// UNIX sockets live below this directory, the deepest 72 bytes below it (the QEMU monitor in an embedded
    /// libvirt root), and sun_path holds 107: a longer `$XDG_RUNTIME_DIR/kiln` is passed over for /tmp/kiln-<uid>.
    public static let maximumLength = 35

    public static func path(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let xdg = environment["XDG_RUNTIME_DIR"], xdg.hasPrefix("/"), (xdg + "/kiln").utf8.count <= maximumLength {
            var info = stat()
            if lstat(xdg, &info) == 0, info.st_mode & S_IFMT == S_IFDIR, info.st_uid == getuid() {
                return xdg + "/kiln"
            }
        }
        return "/tmp/kiln-\(getuid())"
    }

    /// The directory, made and checked.
    public static func make(environment: [String: String] = ProcessInfo.processInfo.environment) throws(KilnError) -> String {
        let directory = path(environment: environment)
        try PrivateDirectory.make(directory)
        return directory
    }
}
