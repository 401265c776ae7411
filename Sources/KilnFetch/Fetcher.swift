import CKilnShim
import Foundation
import KilnDigest
import KilnSupport

#if canImport(Glibc)
import Glibc
#endif

/// A file Kiln downloaded on the host for a customizer, with its SHA-256.
public struct FetchedFile: Sendable {
    public var uri: String
    public var localPath: String
    public var sha256: String
    public var sizeBytes: UInt64
}

/// Downloads scriptUri and sourceUri on the host (https, http, file) and verifies sha256Checksum with OpenSSL before
/// anything is uploaded or run.
///
/// What a template names is not trusted: a download is cut off at a size limit, ends at once when the task is
/// cancelled (Ctrl-C, the build timeout, `kiln template cancel`), never follows a redirect from https down to http,
/// and a `file://` URI reads a regular file only. The content goes to a temporary name beside the destination and
/// gets the destination's name only when it is complete, so a failed or cancelled fetch leaves nothing behind.
public enum Fetcher {
    /// 16 GiB: larger than any script or installer a template sensibly names, small enough that a server streaming
    /// forever cannot fill the disk.
    public static let defaultMaximumBytes: UInt64 = 16 << 30

    /// `KILN_MAX_DOWNLOAD_BYTES` (bytes, or `500M`, `2G`) or 16 GiB.
    public static func maximumBytes(environment: [String: String] = ProcessInfo.processInfo.environment) throws(KilnError) -> UInt64 {
        guard let text = environment["KILN_MAX_DOWNLOAD_BYTES"] else { return defaultMaximumBytes }
        guard let value = ByteSize.parse(text), value > 0 else {
            throw KilnError(.invalidArgument, "KILN_MAX_DOWNLOAD_BYTES: expected a size such as 16G, 500M or a number of bytes, found \"\(text)\"")
        }
        return value
    }

    /// `environment` gives the download limit and the proxy (`https_proxy`, `http_proxy`, `no_proxy`, as curl reads
    /// them).
    public static func fetch(_ uri: String, into directory: String, name: String, maximumBytes: UInt64? = nil,
                             environment: [String: String] = ProcessInfo.processInfo.environment) async throws(KilnError) -> FetchedFile {
        let limit: UInt64
        if let maximumBytes {
            limit = maximumBytes
        } else {
            limit = try Fetcher.maximumBytes(environment: environment)
        }
        let destination = directory + "/" + name
        // Whatever a previous attempt left under the final name goes first: after a failure nothing is there.
        try? FileManager.default.removeItem(atPath: destination)
        let temporary = directory + "/." + name + ".partial-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: temporary) }
        let lower = uri.lowercased()
        if lower.hasPrefix("file://") {
            guard let url = URL(string: uri), url.isFileURL else {
                throw KilnError(.invalidArgument, "expected a file URI such as file:///path/script.sh, found \"\(uri)\"")
            }
            try await copyRegularFile(url.path, uri: uri, to: temporary, limit: limit)
        } else if lower.hasPrefix("http://") || lower.hasPrefix("https://") {
            guard let url = URL(string: uri), url.host != nil else {
                throw KilnError(.invalidArgument, "expected a valid URL, found \"\(uri)\"")
            }
            try await download(url, uri: uri, to: temporary, limit: limit, environment: environment)
        } else {
            throw KilnError(.invalidArgument, "expected an http, https or file URI, found \"\(uri)\"")
        }
        if Task.isCancelled { throw cancelled(uri) }
        guard rename(temporary, destination) == 0 else {
            throw KilnError(.io, "cannot store the download of \(uri) at \(destination): \(String(cString: strerror(errno)))")
        }
        let sum = try SHA256Digest.hex(ofFile: destination)
        let size = (try? FileManager.default.attributesOfItem(atPath: destination)[.size] as? NSNumber)?.uint64Value ?? 0
        return FetchedFile(uri: uri, localPath: destination, sha256: sum, sizeBytes: size)
    }

    static func cancelled(_ uri: String) -> KilnError {
        KilnError(.cancelled, "the download of \(uri) was cancelled")
    }

    static func tooLarge(_ uri: String, limit: UInt64, received: String) -> KilnError {
        KilnError(.invalidArgument, "\(uri) is larger than the download limit of \(limit) bytes (\(ByteSize.format(limit))): \(received); "
                  + "set KILN_MAX_DOWNLOAD_BYTES to allow more")
    }

    // MARK: Redirects

    /// Why a redirect from `from` to `to` must not be followed, or nil. A redirect from https to http would send the
    /// request (and take the content) in the clear after the template asked for TLS; any scheme but http(s) would
    /// let a server point Kiln at a local file.
    public static func redirectProblem(from: URL?, to: URL?) -> String? {
        let fromText = from?.absoluteString ?? "an unknown URL"
        guard let to, let target = to.scheme?.lowercased() else {
            return "\(fromText) redirected to a location that is not a URL"
        }
        guard target == "http" || target == "https" else {
            return "\(fromText) redirected to \(to.absoluteString), which is not http or https; not followed"
        }
        if from?.scheme?.lowercased() == "https" && target == "http" {
            return "\(fromText) redirected to \(to.absoluteString), from https down to http; not followed (ask the server for an https location)"
        }
        return nil
    }

    // MARK: file://

    /// File systems whose files say they are regular but are the kernel's views (their sizes lie, reading them can
    /// block or have effects): procfs, sysfs, debugfs, tracefs, securityfs, configfs, cgroup, cgroup2, efivarfs, bpf.
    static let pseudoFileSystems: [Int: String] = [
        0x9FA0: "procfs", 0x6265_6572: "sysfs", 0x6462_6720: "debugfs", 0x7472_6163: "tracefs", 0x7363_6673: "securityfs",
        0x6265_6570: "configfs", 0x0027_E0EB: "cgroup", 0x6367_7270: "cgroup2", 0xDE5E_81E4: "efivarfs", 0xCAFE_4A11: "bpf",
    ]

    /// What a stat mode is, in words, for "found …".
    static func describe(mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFREG: return "a regular file"
        case S_IFDIR: return "a directory"
        case S_IFCHR: return "a character device"
        case S_IFBLK: return "a block device"
        case S_IFIFO: return "a FIFO (named pipe)"
        case S_IFSOCK: return "a socket"
        case S_IFLNK: return "a symbolic link"
        default: return "a special file"
        }
    }

    /// Copies a regular file (symbolic links followed) with the size limit. The file is opened before it is
    /// checked, and the checks are made on what was opened, so nothing can be swapped in between; O_NONBLOCK keeps
    /// the open of a FIFO from waiting for a writer.
    static func copyRegularFile(_ path: String, uri: String, to temporary: String, limit: UInt64) async throws(KilnError) {
        // The copy runs on a Dispatch thread, which has no task to ask: cancellation reaches it through this flag.
        let stopFlag = CancellationFlag()
        let result: Result<Void, KilnError> = await withTaskCancellationHandler {
            await copy(path, uri: uri, to: temporary, limit: limit, stopFlag: stopFlag)
        } onCancel: {
            stopFlag.set()
        }
        try result.get()
    }

    private static func copy(_ path: String, uri: String, to temporary: String, limit: UInt64, stopFlag: CancellationFlag) async -> Result<Void, KilnError> {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                continuation.resume(returning: copyBlocking(path, uri: uri, to: temporary, limit: limit, stopFlag: stopFlag))
            }
        }
    }

    private static func copyBlocking(_ path: String, uri: String, to temporary: String, limit: UInt64, stopFlag: CancellationFlag) -> Result<Void, KilnError> {
        let source = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard source >= 0 else {
            let code = errno
            if code == ENOENT { return .failure(KilnError(.notFound, "cannot fetch \(uri): no file at \(path)")) }
            return .failure(KilnError(.io, "cannot fetch \(uri): cannot open \(path): \(String(cString: strerror(code)))"))
        }
        defer { close(source) }
        var info = stat()
        guard fstat(source, &info) == 0 else {
            return .failure(KilnError(.io, "cannot fetch \(uri): cannot stat \(path): \(String(cString: strerror(errno)))"))
        }
        guard info.st_mode & S_IFMT == S_IFREG else {
            return .failure(KilnError(.invalidArgument, "cannot fetch \(uri): expected a regular file at \(path), found \(describe(mode: info.st_mode))"))
        }
        if let kind = pseudoFileSystems[kiln_fstatfs_type(source)] {
            return .failure(KilnError(.invalidArgument, "cannot fetch \(uri): expected a regular file at \(path), found a file of the kernel's \(kind) pseudo file system"))
        }
        if UInt64(info.st_size) > limit {
            return .failure(tooLarge(uri, limit: limit, received: "\(path) is \(info.st_size) bytes"))
        }
        let flags = fcntl(source, F_GETFL)
        _ = fcntl(source, F_SETFL, flags & ~O_NONBLOCK)
        let target = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard target >= 0 else {
            return .failure(KilnError(.io, "cannot fetch \(uri): cannot create \(temporary): \(String(cString: strerror(errno)))"))
        }
        defer { close(target) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var copied: UInt64 = 0
        while true {
            if stopFlag.isSet { return .failure(cancelled(uri)) }
            let count = buffer.withUnsafeMutableBytes { read(source, $0.baseAddress, $0.count) }
            if count == 0 { return .success(()) }
            guard count > 0 else {
                if errno == EINTR { continue }
                return .failure(KilnError(.io, "cannot fetch \(uri): reading \(path) failed: \(String(cString: strerror(errno)))"))
            }
            copied += UInt64(count)
            // The file may grow while it is read.
            if copied > limit { return .failure(tooLarge(uri, limit: limit, received: "read \(copied) bytes of \(path) so far")) }
            let written = buffer.withUnsafeBytes { pointer -> Bool in
                var offset = 0
                while offset < count {
                    let step = write(target, pointer.baseAddress! + offset, count - offset)
                    if step < 0 && errno == EINTR { continue }
                    guard step > 0 else { return false }
                    offset += step
                }
                return true
            }
            guard written else {
                return .failure(KilnError(.io, "cannot fetch \(uri): writing \(temporary) failed: \(String(cString: strerror(errno)))"))
            }
        }
    }

    final class CancellationFlag: @unchecked Sendable {
        private let lock = NSLock()
        private var value = false
        func set() { lock.withLock { value = true } }
        var isSet: Bool { lock.withLock { value } }
    }

    // MARK: http(s)

    /// Redirects followed at most; a longer chain is an error.
    static let maximumRedirects = 10

    /// GETs `url` into `temporary`, following redirects the policy allows. Cancellation aborts the connection in
    /// use, which ends a blocked read at once.
    private static func download(_ url: URL, uri: String, to temporary: String, limit: UInt64, environment: [String: String]) async throws(KilnError) {
        var current = url
        for _ in 0...maximumRedirects {
            let output = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard output >= 0 else {
                throw KilnError(.io, "cannot fetch \(uri): cannot create \(temporary): \(String(cString: strerror(errno)))")
            }
            defer { close(output) }
            let get = try HTTPGet(current, environment: environment)
            let result: Result<HTTPGet.Outcome, KilnError> = await withTaskCancellationHandler {
                await withCheckedContinuation { continuation in
                    DispatchQueue.global().async {
                        do throws(KilnError) {
                            continuation.resume(returning: .success(try get.perform(output: output, limit: limit)))
                        } catch {
                            continuation.resume(returning: .failure(error))
                        }
                    }
                }
            } onCancel: {
                get.abort()
            }
            if Task.isCancelled || get.wasAborted { throw cancelled(uri) }
            switch result {
            case .failure(let error):
                // Errors name the URL that failed; say where a redirect chain started.
                if current != url {
                    throw KilnError(error.code, error.message + " (redirected from \(uri))")
                }
                throw error
            case .success(.complete):
                return
            case .success(.redirect(let next)):
                if let problem = redirectProblem(from: current, to: next) {
                    throw KilnError(.invalidArgument, "cannot download \(uri): \(problem)")
                }
                current = next
            }
        }
        throw KilnError(.io, "cannot download \(uri): more than \(maximumRedirects) redirects")
    }
}
