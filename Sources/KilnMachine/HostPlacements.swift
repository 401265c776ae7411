import Foundation
import KilnSupport

/// The builds this controller has put on remote hosts and that have not ended: `<state>/placements/<runID>.json`
/// names the host's URI and the process that placed it. A build counts for its host from the moment it is placed,
/// not only once its domain runs there (after the source's upload, minutes later), so builds started together —
/// `kiln template run A B C --no-wait` — spread over the hosts. Placing takes the folder's lock for the whole
/// choice, so two builds choosing at once do not both see the same counts. A placement whose process has ended
/// no longer counts, and goes the next time the folder is read.
public struct HostPlacements: Sendable {
    public let directory: String

    public init(state: StateDirectory) {
        directory = state.path + "/placements"
    }

    public init(directory: String) {
        self.directory = directory
    }

    struct Placement: Codable {
        var uri: String
        var process: String
    }

    /// Runs `body` with the placements locked against other Kiln processes of this state directory.
    public func locked<T: Sendable>(_ body: () async throws(KilnError) -> T) async throws(KilnError) -> T {
        let lockPath = directory + "/lock"
        let directory = self.directory
        let descriptor = try await Blocking.run { () throws(KilnError) -> Int32 in
            try PrivateDirectory.createPath(directory)
            let fd = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw KilnError(.io, "cannot open \(lockPath): \(String(cString: strerror(errno)))") }
            guard flock(fd, LOCK_EX) == 0 else {
                close(fd)
                throw KilnError(.io, "cannot lock \(lockPath): \(String(cString: strerror(errno)))")
            }
            return fd
        }
        defer { close(descriptor) }
        return try await body()
    }

    /// The runs placed on each host (by URI) whose placing process still runs; the others are removed.
    public func live() -> [String: [String]] {
        var result: [String: [String]] = [:]
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where name.hasSuffix(".json") {
            let path = directory + "/" + name
            guard let placement = RecordFile.read(Placement.self, from: path),
                  ProcessIdentity(placement.process)?.isAlive == true else {
                try? FileManager.default.removeItem(atPath: path)
                continue
            }
            result[placement.uri, default: []].append(String(name.dropLast(".json".count)))
        }
        return result
    }

    /// Records that this process placed `runID` on `uri` (replacing where it was placed before).
    public func record(runID: String, uri: String) throws(KilnError) {
        try PrivateDirectory.createPath(directory)
        try RecordFile.write(Placement(uri: uri, process: ProcessIdentity.current.description), to: directory + "/\(runID).json")
    }

    /// The build ended: it no longer counts for its host.
    public func remove(runID: String) {
        try? FileManager.default.removeItem(atPath: directory + "/\(runID).json")
    }
}
