import Foundation
import KilnDigest
import KilnSupport

/// Content-addressed copies of what templates download (scriptUri, sourceUri), filled by `kiln fetch` and read by
/// `kiln build --offline`: `<state>/cache/downloads/sha256/<hex>` plus `index.json`, which maps each URI to the
/// sha256 seen when it was fetched (a URI without a sha256Checksum in the template is pinned by it).
public struct DownloadCache: Sendable {
    public struct Entry: Codable, Sendable, Equatable {
        public var uri: String
        public var sha256: String
        public var sizeBytes: UInt64
        public var fetchedAt: Date
    }

    public let directory: String

    public init(state: StateDirectory) {
        directory = state.cachePath + "/downloads"
    }

    var indexPath: String { directory + "/index.json" }

    public func blobPath(_ sha256: String) -> String { directory + "/sha256/" + sha256 }

    public func index() -> [String: Entry] {
        RecordFile.read([String: Entry].self, from: indexPath) ?? [:]
    }

    /// The cached copy of `uri`, if the index names one and its file is there (`materialize` checks its content).
    public func lookup(_ uri: String) -> Entry? {
        guard let entry = index()[uri], FileManager.default.fileExists(atPath: blobPath(entry.sha256)) else { return nil }
        return entry
    }

    /// Keeps a verified download under its sha256 and records `uri` → sha256.
    @discardableResult
    public func store(_ file: FetchedFile) throws(KilnError) -> Entry {
        let blob = blobPath(file.sha256)
        let fileManager = FileManager.default
        do {
            try fileManager.createDirectory(atPath: directory + "/sha256", withIntermediateDirectories: true)
            if !fileManager.fileExists(atPath: blob) {
                let temporary = blob + ".partial-\(getpid())"
                try? fileManager.removeItem(atPath: temporary)
                try fileManager.copyItem(atPath: file.localPath, toPath: temporary)
                try fileManager.setAttributes([.posixPermissions: 0o444], ofItemAtPath: temporary)
                try AtomicFile.rename(temporary, to: blob)
            }
        } catch let error as KilnError {
            throw error
        } catch {
            throw KilnError(.io, "cannot keep \(file.uri) in the download cache \(directory): \(error.localizedDescription)")
        }
        let entry = Entry(uri: file.uri, sha256: file.sha256, sizeBytes: file.sizeBytes, fetchedAt: Date())
        // One writer at a time: concurrent fetches each add their URIs.
        let lock = open(directory + "/index.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard lock >= 0 else { throw KilnError(.io, "cannot lock \(directory)/index.lock") }
        defer { close(lock) }
        flock(lock, LOCK_EX)
        var all = index()
        all[file.uri] = entry
        try RecordFile.write(all, to: indexPath)
        return entry
    }

    /// Copies the cached content of `uri` to `destination`, as Fetcher would have written it, and checks the copy
    /// against the sha256 recorded when it was fetched (a damaged cache is an error, not a different script).
    public func materialize(_ entry: Entry, to destination: String) throws(KilnError) -> FetchedFile {
        do {
            try? FileManager.default.removeItem(atPath: destination)
            try FileManager.default.copyItem(atPath: blobPath(entry.sha256), toPath: destination)
            try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: destination)
        } catch {
            throw KilnError(.io, "cannot copy \(entry.uri) from the download cache: \(error.localizedDescription)")
        }
        let actual = try SHA256Digest.hex(ofFile: destination)
        guard actual == entry.sha256 else {
            try? FileManager.default.removeItem(atPath: destination)
            throw KilnError(.checksumMismatch, "the download cache's copy of \(entry.uri) is damaged: sha256 \(actual), recorded \(entry.sha256) when fetched; kiln fetch it again")
        }
        return FetchedFile(uri: entry.uri, localPath: destination, sha256: entry.sha256, sizeBytes: entry.sizeBytes)
    }

    /// Whether fetching `uri` would use the network (file:// URIs are read where they are, also offline).
    public static func needsNetwork(_ uri: String) -> Bool {
        !uri.lowercased().hasPrefix("file://")
    }
}

/// What one template downloads: every scriptUri and sourceUri of its customizers and in-VM validations.
public struct TemplateDownload: Sendable {
    /// `properties.customize[2].scriptUri`
    public var path: String
    public var uri: String
    public var sha256Checksum: String?

    public init(path: String, uri: String, sha256Checksum: String?) {
        self.path = path
        self.uri = uri
        self.sha256Checksum = sha256Checksum
    }
}

extension DownloadCache {
    /// Downloads `download`, verifies its sha256Checksum when the template gives one, and keeps it.
    public func fetch(_ download: TemplateDownload) async throws(KilnError) -> Entry {
        sweepScratch()
        let scratch = directory + "/.fetch-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let file = try await Fetcher.fetch(download.uri, into: scratch, name: "download")
        if let expected = download.sha256Checksum, !ChecksumCheck.matches(expected: expected, actual: file.sha256) {
            throw KilnError(.checksumMismatch, "\(download.path): sha256 checksum mismatch for \(download.uri): expected \(expected.lowercased()), actual \(file.sha256); not kept")
        }
        return try store(file)
    }

    /// Removes the scratch folders (`.fetch-<pid>-…`) and blob temporaries (`sha256/<hex>.partial-<pid>`) of
    /// processes that are gone: a fetch killed outright (SIGKILL, a power cut) cannot clean up after itself.
    func sweepScratch() {
        let fileManager = FileManager.default
        func isDead(_ pidText: Substring) -> Bool {
            guard let pid = Int32(pidText), pid > 0 else { return false }
            return kill(pid, 0) != 0 && errno == ESRCH
        }
        for name in (try? fileManager.contentsOfDirectory(atPath: directory)) ?? [] where name.hasPrefix(".fetch-") {
            if let pid = name.dropFirst(".fetch-".count).split(separator: "-").first, isDead(pid) {
                try? fileManager.removeItem(atPath: directory + "/" + name)
            }
        }
        for name in (try? fileManager.contentsOfDirectory(atPath: directory + "/sha256")) ?? [] {
            guard let range = name.range(of: ".partial-") else { continue }
            if isDead(name[range.upperBound...]) { try? fileManager.removeItem(atPath: directory + "/sha256/" + name) }
        }
    }
}
