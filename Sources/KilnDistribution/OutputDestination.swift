import Foundation
import KilnSupport

/// Where a VHD target's `uri` may put a file. A `uri` can name any path, so without these rules a build could
/// replace another build's output, a user's file, or Kiln's own state database and stored images.
/// - An existing file is replaced only with `--force`, and never when it is a symbolic link or not a regular file.
/// - No directory on the way may be a symbolic link: the file lands where the template says, not where a link
///   placed in a shared directory sends it.
/// - Nothing inside Kiln's state directory or cache (runs, the store, built source images, checkpoints).
public enum OutputDestination {
    /// The places no output may go: the state directory and Kiln's cache.
    public static func protectedDirectories(state: StateDirectory, environment: [String: String] = ProcessInfo.processInfo.environment) -> [String] {
        [state.path, KilnCache.path(environment: environment)]
    }

    /// Checks `path` (absolute) for a VHD target described by `field` (for the error message).
    public static func check(_ path: String, field: String, force: Bool, protected: [String]) throws(KilnError) {
        guard path.hasPrefix("/") else {
            throw KilnError(.invalidTemplate, "\(field): expected an absolute path or file:// URI, found \"\(path)\"")
        }
        let components = normalized(path)
        guard let name = components.last else {
            throw KilnError(.invalidTemplate, "\(field): expected a file path, found \"\(path)\"")
        }
        // Every existing directory on the way must be a real directory.
        var walked = ""
        for component in components.dropLast() {
            walked += "/" + component
            var info = stat()
            guard lstat(walked, &info) == 0 else { break }
            if info.st_mode & S_IFMT == S_IFLNK {
                let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: walked)) ?? "?"
                throw KilnError(.invalidTemplate, "\(field): expected a path without symbolic links, found \(walked) → \(target) in \(path); name the real directory")
            }
            guard info.st_mode & S_IFMT == S_IFDIR else {
                throw KilnError(.invalidTemplate, "\(field): expected \(walked) to be a directory in \(path), found a file")
            }
        }
        let resolved = "/" + components.joined(separator: "/")
        for directory in protected {
            let real = realpath(directory)
            for candidate in Set([directory, real]) where resolved == candidate || resolved.hasPrefix(candidate + "/") {
                throw KilnError(.invalidTemplate, "\(field): expected a path outside Kiln's state and cache directory \(candidate), found \(path); a VHD target without a local uri is written to its run directory")
            }
        }
        var info = stat()
        guard lstat(resolved, &info) == 0 else { return }
        switch info.st_mode & S_IFMT {
        case S_IFREG:
            guard force else {
                throw KilnError(.invalidState, "\(field): expected no file at \(resolved), found one (\(info.st_size) bytes); pass --force to replace it")
            }
        case S_IFLNK:
            throw KilnError(.invalidState, "\(field): expected no file at \(resolved), found a symbolic link; remove it first (--force replaces regular files only)")
        default:
            throw KilnError(.invalidState, "\(field): expected a file name at \(resolved), found \(name) is a directory or special file")
        }
    }

    /// The path's components with `.` and `..` applied (after the check that no directory on the way is a link,
    /// `..` means the lexical parent).
    static func normalized(_ path: String) -> [String] {
        var result: [String] = []
        for component in path.split(separator: "/", omittingEmptySubsequences: true) {
            switch component {
            case ".": continue
            case "..": _ = result.popLast()
            default: result.append(String(component))
            }
        }
        return result
    }

    static func realpath(_ path: String) -> String {
        guard let resolved = Glibc.realpath(path, nil) else { return path }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
