import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Reads a template or parameter file whole, refusing one larger than ARM accepts before reading (or parsing) it:
/// a 50 MB file is a mistake or an attack, and parsing it would cost seconds and hundreds of megabytes.
public enum InputFile {
    /// ARM's own limit on a template and on a parameter file is 4 MB
    /// (https://learn.microsoft.com/azure/azure-resource-manager/templates/best-practices#template-limits);
    /// Kiln takes 4 MiB.
    public static let maximumBytes = 4 << 20

    /// Why a file was not read, as a diagnostic message.
    struct Refusal: Error {
        var message: String
    }

    /// The bytes of `path`, or why not, as "expected …, found …" naming the path. `what` is "template" or
    /// "parameter file". A pipe or process substitution (no size to ask) is read up to the limit and refused past it.
    static func read(_ path: String, what: String, maximumBytes: Int = InputFile.maximumBytes) -> Result<[UInt8], Refusal> {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let reason = errno == ENOENT ? "no such file" : "a file it cannot open (\(String(cString: strerror(errno))))"
            return .failure(Refusal(message: "expected a readable \(what) file, found \(reason): \(path)"))
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            return .failure(Refusal(message: "expected a readable \(what) file, found one it cannot stat (\(String(cString: strerror(errno)))): \(path)"))
        }
        if info.st_mode & S_IFMT == S_IFDIR {
            return .failure(Refusal(message: "expected a readable \(what) file, found a directory: \(path)"))
        }
        let limitText = "\(maximumBytes) bytes (\(maximumBytes >> 20) MiB, ARM's own limit)"
        if info.st_mode & S_IFMT == S_IFREG, Int(info.st_size) > maximumBytes {
            return .failure(Refusal(message: "expected a \(what) of at most \(limitText), found \(info.st_size) bytes: \(path)"))
        }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count == 0 { return .success(bytes) }
            guard count > 0 else {
                if errno == EINTR { continue }
                return .failure(Refusal(message: "expected a readable \(what) file, found one whose reading failed (\(String(cString: strerror(errno)))): \(path)"))
            }
            bytes += buffer[0..<count]
            if bytes.count > maximumBytes {
                return .failure(Refusal(message: "expected a \(what) of at most \(limitText), found more than that: \(path)"))
            }
        }
    }
}
