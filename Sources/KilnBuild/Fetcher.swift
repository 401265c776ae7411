import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import KilnDigest
import KilnSupport

/// A file Kiln downloaded on the host for a customizer, with its SHA-256.
public struct FetchedFile: Sendable {
    public var uri: String
    public var localPath: String
    public var sha256: String
    public var sizeBytes: UInt64
}

/// Downloads scriptUri and sourceUri on the host (https, http, file) and verifies sha256Checksum with OpenSSL before
/// anything is uploaded or run.
public enum Fetcher {
    public static func fetch(_ uri: String, into directory: String, name: String) async throws(KilnError) -> FetchedFile {
        let destination = directory + "/" + name
        let lower = uri.lowercased()
        if lower.hasPrefix("file://") {
            guard let url = URL(string: uri), url.isFileURL else {
                throw KilnError(.invalidArgument, "expected a file URI such as file:///path/script.sh, found \"\(uri)\"")
            }
            let path = url.path
            guard FileManager.default.fileExists(atPath: path) else {
                throw KilnError(.notFound, "cannot fetch \(uri): no file at \(path)")
            }
            do {
                try? FileManager.default.removeItem(atPath: destination)
                try FileManager.default.copyItem(atPath: path, toPath: destination)
            } catch {
                throw KilnError(.io, "cannot copy \(path): \(error.localizedDescription)")
            }
        } else if lower.hasPrefix("http://") || lower.hasPrefix("https://") {
            guard let url = URL(string: uri) else { throw KilnError(.invalidArgument, "expected a valid URL, found \"\(uri)\"") }
            let result: Result<URL, KilnError> = await withCheckedContinuation { continuation in
                let task = URLSession.shared.downloadTask(with: url) { location, response, error in
                    if let error {
                        continuation.resume(returning: .failure(KilnError(.io, "cannot download \(uri): \(error.localizedDescription)")))
                        return
                    }
                    if let http = response as? HTTPURLResponse, !(200..<300).contains(http.statusCode) {
                        continuation.resume(returning: .failure(KilnError(.io, "cannot download \(uri): HTTP \(http.statusCode)")))
                        return
                    }
                    guard let location else {
                        continuation.resume(returning: .failure(KilnError(.io, "cannot download \(uri): no data")))
                        return
                    }
                    // The temporary file is removed when this handler returns: move it now.
                    do {
                        try? FileManager.default.removeItem(atPath: destination)
                        try FileManager.default.moveItem(at: location, to: URL(fileURLWithPath: destination))
                        continuation.resume(returning: .success(URL(fileURLWithPath: destination)))
                    } catch {
                        continuation.resume(returning: .failure(KilnError(.io, "cannot store the download of \(uri): \(error.localizedDescription)")))
                    }
                }
                task.resume()
            }
            _ = try result.get()
        } else {
            throw KilnError(.invalidArgument, "expected an http, https or file URI, found \"\(uri)\"")
        }
        let sum = try SHA256Digest.hex(ofFile: destination)
        let size = (try? FileManager.default.attributesOfItem(atPath: destination)[.size] as? NSNumber)?.uint64Value ?? 0
        return FetchedFile(uri: uri, localPath: destination, sha256: sum, sizeBytes: size)
    }
}
