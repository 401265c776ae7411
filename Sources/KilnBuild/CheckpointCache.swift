import Foundation
import KilnDigest
import KilnMachine
import KilnSupport
import KilnTemplate

/// One checkpoint in the build cache: the guest after booting (`step` nil) or after `customize[step]`.
public struct CheckpointEntry: Codable, Sendable, Equatable {
    /// The content key: a hash of the source image, the VM profile and every step up to here.
    public var key: String
    public var parentKey: String?
    /// The parent's folder name; the disk layer's backing file lives there.
    public var parentFolder: String?
    /// nil: the booted source, before any customizer.
    public var step: Int?
    /// "boot" or the customizer's label (its name, or `customize[2] Shell`).
    public var label: String
    public var templateName: String
    public var runID: String
    public var createdAt: Date
    public var lastUsedAt: Date
    public var machine: MachineCheckpoint

    public init(key: String, parentKey: String?, parentFolder: String?, step: Int?, label: String, templateName: String, runID: String,
                createdAt: Date, lastUsedAt: Date, machine: MachineCheckpoint) {
        self.key = key
        self.parentKey = parentKey
        self.parentFolder = parentFolder
        self.step = step
        self.label = label
        self.templateName = templateName
        self.runID = runID
        self.createdAt = createdAt
        self.lastUsedAt = lastUsedAt
        self.machine = machine
    }

    /// The checkpoint's folder name under the cache: the key, then the run that made it (two runs may make the
    /// same key, with `--no-cache`, or at once).
    public var folder: String { (machine.directory as NSString).lastPathComponent }
    public var shortKey: String { String(key.prefix(12)) }
    public var stepDescription: String { step.map { "after customize[\($0)] \(label)" } ?? "after boot" }
}

/// The build cache: checkpoints under `<state>/cache/checkpoints/<key>-<runID>/`, each a memory image, a disk
/// layer over its parent's and `meta.json`. A build holds a shared lock on each checkpoint it uses (its disk layer
/// backs the build's overlay); removal takes the lock exclusively and skips checkpoints in use. Removing a
/// checkpoint removes its descendants too: their layers are backed by its layer.
public struct CheckpointCache: Sendable {
    public let directory: String

    public init(state: StateDirectory) {
        directory = state.cachePath + "/checkpoints"
    }

    public init(directory: String) {
        self.directory = directory
    }

    /// The default size limit, `KILN_CACHE_MAX_SIZE` (`20G`, `500M`) or 20 GiB; least recently used checkpoints
    /// go first once the cache grows past it.
    public static func defaultLimitBytes(environment: [String: String] = ProcessInfo.processInfo.environment) -> UInt64 {
        environment["KILN_CACHE_MAX_SIZE"].flatMap(ByteSize.parse) ?? 20 << 30
    }

    // MARK: Reading

    /// Every complete checkpoint, oldest first. A folder without `meta.json` is a checkpoint still being written
    /// (its build holds the lock) or one a dead build left: those are removed.
    public func entries() -> [CheckpointEntry] {
        var result: [CheckpointEntry] = []
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            let path = directory + "/" + name
            guard let entry = read(path) else {
                if !FileManager.default.fileExists(atPath: path + "/meta.json") { sweepAbandoned(path) }
                continue
            }
            result.append(entry)
        }
        return result.sorted { $0.createdAt < $1.createdAt }
    }

    /// Folders whose `meta.json` cannot be read (an older Kiln's format, or damaged): prune removes them.
    public func unreadableFolders() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [])
            .map { directory + "/" + $0 }
            .filter { FileManager.default.fileExists(atPath: $0 + "/meta.json") && read($0) == nil }
    }

    func read(_ folder: String) -> CheckpointEntry? {
        RecordFile.read(CheckpointEntry.self, from: folder + "/meta.json")
    }

    /// The newest complete checkpoint for `key` whose whole chain (every parent) is still there; with `within`,
    /// only one of those folders.
    public func lookup(_ key: String, within: Set<String>? = nil) -> CheckpointEntry? {
        let all = entries()
        let byFolder = Dictionary(all.map { ($0.folder, $0) }, uniquingKeysWith: { first, _ in first })
        func complete(_ entry: CheckpointEntry) -> Bool {
            guard let parent = entry.parentFolder else { return true }
            guard let parentEntry = byFolder[parent] else { return false }
            return complete(parentEntry)
        }
        return all.filter { $0.key == key && (within?.contains($0.folder) ?? true) && complete($0) }.last
    }

    /// `entry` and its ancestors, the chain its disk layer stands on.
    public func chain(of entry: CheckpointEntry) -> [CheckpointEntry] {
        var result = [entry]
        var current = entry
        while let parent = current.parentFolder, let parentEntry = read(directory + "/" + parent) {
            result.append(parentEntry)
            current = parentEntry
        }
        return result
    }

    /// `entry` and every checkpoint built on it.
    public func descendants(of entry: CheckpointEntry, in all: [CheckpointEntry]) -> [CheckpointEntry] {
        var result = [entry]
        var frontier = [entry.folder]
        while let folder = frontier.popLast() {
            for child in all where child.parentFolder == folder {
                result.append(child)
                frontier.append(child.folder)
            }
        }
        return result
    }

    /// Bytes the checkpoint's own files take on disk (allocated blocks: layers and memory images are sparse).
    /// A remote checkpoint's volumes on its host count too (as measured when it was taken).
    public func sizeBytes(_ entry: CheckpointEntry) -> UInt64 {
        CheckpointCache.folderBytes(entry.machine.directory) + (entry.machine.remote?.bytes ?? 0)
    }

    static func folderBytes(_ folder: String) -> UInt64 {
        ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []).reduce(UInt64(0)) { $0 + FileSize.allocatedBytes(folder + "/" + $1) }
    }

    // MARK: Using

    /// A shared lock on the checkpoint's folder for as long as the returned hold lives: removal skips it.
    public func hold(_ entry: CheckpointEntry) -> CheckpointHold? {
        CheckpointHold(folder: entry.machine.directory, exclusive: false, wait: true)
    }

    /// Records that a build used the checkpoint (for least-recently-used eviction).
    public func touch(_ entry: CheckpointEntry) {
        var updated = entry
        updated.lastUsedAt = Date()
        try? writeMeta(updated, into: entry.machine.directory)
    }

    // MARK: Writing

    /// The folder for the checkpoint `key` that this run will write, locked (shared) until the build ends. It
    /// gets its final name at once: the next overlay's qcow2 header names its backing file by path, so the folder
    /// never moves. It counts as a checkpoint only once `commit` wrote its `meta.json`.
    public func begin(key: String, runID: String) throws(KilnError) -> PendingCheckpoint {
        let folder = directory + "/\(key)-\(runID)"
        // Mode 0700: the folder gets the guest's memory image (whatever secrets the guest held) and the build key.
        try PrivateDirectory.createPath(folder)
        ProcessWatchdog.shared?.removeOnDeath(folder, unlessItHolds: "meta.json")
        guard let hold = CheckpointHold(folder: folder, exclusive: false, wait: true) else {
            try? FileManager.default.removeItem(atPath: folder)
            throw KilnError(.io, "cannot lock the checkpoint folder \(folder)")
        }
        return PendingCheckpoint(folder: folder, hold: hold)
    }

    /// Makes the checkpoint visible: writes its `meta.json` (atomically).
    public func commit(_ entry: CheckpointEntry) throws(KilnError) {
        try writeMeta(entry, into: entry.machine.directory)
    }

    private func writeMeta(_ entry: CheckpointEntry, into folder: String) throws(KilnError) {
        try RecordFile.write(entry, to: folder + "/meta.json")
    }

    // MARK: Removing

    public struct Removal: Sendable {
        public var removed: [CheckpointEntry] = []
        public var freedBytes: UInt64 = 0
        /// Checkpoints that would have gone but a running build uses them.
        public var inUse: [CheckpointEntry] = []
    }

    /// Removes `entry` and its descendants unless one of them is in use (then nothing of that subtree goes).
    public func remove(_ entry: CheckpointEntry, all: [CheckpointEntry]? = nil) -> Removal {
        let subtree = descendants(of: entry, in: all ?? entries())
        var holds: [CheckpointHold] = []
        var removal = Removal()
        for member in subtree {
            guard let hold = CheckpointHold(folder: member.machine.directory, exclusive: true, wait: false) else {
                removal.inUse.append(member)
                return removal
            }
            holds.append(hold)
        }
        // Children first, so a parent never goes while a layer it backs is still listed.
        for member in subtree.reversed() {
            let size = sizeBytes(member)
            if (try? FileManager.default.removeItem(atPath: member.machine.directory)) != nil {
                removal.removed.append(member)
                removal.freedBytes += size
            }
        }
        _ = holds
        return removal
    }

    /// Removes checkpoints not used for `olderThan`, then the least recently used until the cache fits in
    /// `maxBytes`. Only leaves go, one at a time: a parent is worth keeping while a checkpoint built on it is.
    /// Checkpoints in use stay, and so do their ancestors.
    public func prune(olderThan: Duration? = nil, maxBytes: UInt64? = nil, now: Date = Date()) -> Removal {
        var total = Removal()
        for folder in unreadableFolders() {
            total.freedBytes += removeUnheld(folder)
        }
        var all = entries()
        var used = all.reduce(UInt64(0)) { $0 + sizeBytes($1) }
        let cutoff = olderThan.map { now.addingTimeInterval(-$0.inSeconds) }
        var skipped: Set<String> = []
        while true {
            let leaves = all.filter { leaf in !skipped.contains(leaf.folder) && !all.contains { $0.parentFolder == leaf.folder } }
            let candidate = leaves.sorted { $0.lastUsedAt < $1.lastUsedAt }.first { leaf in
                if let cutoff, leaf.lastUsedAt < cutoff { return true }
                if let maxBytes, used > maxBytes { return true }
                return false
            }
            guard let candidate else { break }
            let removal = remove(candidate, all: all)
            if removal.removed.isEmpty {
                // In use: it stays, and so does the chain under it.
                skipped.insert(candidate.folder)
                var parent = candidate.parentFolder
                while let folder = parent {
                    skipped.insert(folder)
                    parent = all.first { $0.folder == folder }?.parentFolder
                }
                total.inUse.append(contentsOf: removal.inUse)
                continue
            }
            total.removed += removal.removed
            total.freedBytes += removal.freedBytes
            used -= min(used, removal.freedBytes)
            all.removeAll { $0.folder == candidate.folder }
        }
        return total
    }

    /// A folder without `meta.json` that no build holds: a checkpoint that was never completed. Only folders a
    /// minute old: a build creates the folder just before it locks it.
    private func sweepAbandoned(_ path: String) {
        let modified = (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date ?? Date()
        guard Date().timeIntervalSince(modified) > 60 else { return }
        _ = removeUnheld(path)
    }

    /// Removes a folder no build holds; returns the bytes it freed (0 when held or not removed).
    private func removeUnheld(_ folder: String) -> UInt64 {
        guard let hold = CheckpointHold(folder: folder, exclusive: true, wait: false) else { return 0 }
        defer { _ = hold }
        let size = CheckpointCache.folderBytes(folder)
        return (try? FileManager.default.removeItem(atPath: folder)) != nil ? size : 0
    }
}

/// A checkpoint folder being written.
public struct PendingCheckpoint: Sendable {
    public let folder: String
    public let hold: CheckpointHold

    /// Removes the folder: the checkpoint could not be completed.
    public func abandon() {
        try? FileManager.default.removeItem(atPath: folder)
    }
}

/// An flock(2) on a checkpoint folder's `lock` file, released when the hold is released or the process ends.
public final class CheckpointHold: @unchecked Sendable {
    private let descriptor: Int32

    init?(folder: String, exclusive: Bool, wait: Bool) {
        let fd = open(folder + "/lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return nil }
        let operation = (exclusive ? LOCK_EX : LOCK_SH) | (wait ? 0 : LOCK_NB)
        guard flock(fd, operation) == 0 else {
            close(fd)
            return nil
        }
        descriptor = fd
    }

    deinit { close(descriptor) }
}

/// The content keys of a build's checkpoints: like image layers, each hashes its parent's key with what the step
/// does, so editing customize[6] changes the keys from customize[6] on and keeps the ones before.
public struct CheckpointKeys: Sendable {
    /// Kiln's checkpoint format; a change here invalidates every older checkpoint.
    static let format = "kiln-checkpoint-6"

    /// The booted source: the image file (path, size, modification time), the VM's profile, how the build user
    /// got in, and what the guest's instance metadata says (a step may have read it). Memory images resume only
    /// on the same CPU model and machine, hence the accelerator; a remote `host` (its URI and pool) keeps the
    /// volumes, so its checkpoints are its own.
    public static func boot(source: SourceImage, size: VMSize, osDiskSizeGB: Int, accelerator: Accelerator, username: String,
                            instanceMetadata: InstanceMetadata? = nil, host: String? = nil) throws(KilnError) -> String {
        let attributes = (try? FileManager.default.attributesOfItem(atPath: source.path)) ?? [:]
        let modified = (attributes[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
        let fileSize = (attributes[.size] as? NSNumber)?.uint64Value ?? 0
        return try hash([
            format, "source", source.path, String(fileSize), String(format: "%.6f", modified), source.format, source.firmware.rawValue,
            "vm", size.name.lowercased(), String(size.vCPUs), String(size.memoryMiB), String(osDiskSizeGB), accelerator.rawValue,
            "user", username, "provisioning", source.provisioning?.rawValue ?? "-",
            "metadata", instanceMetadata?.canonicalText ?? "-",
        ] + (host.map { ["host", $0] } ?? []))
    }

    /// A customizer on top of `parent`: its whole definition, its position, and the sha256 of what it downloaded
    /// (a changed scriptUri content invalidates the step even when the template did not change).
    public static func step(parent: String, index: Int, step: Customizer, downloadedSHA256: String?) throws(KilnError) -> String {
        try hash([format, "step", parent, String(index), String(reflecting: step), downloadedSHA256 ?? "-"])
    }

    static func hash(_ fields: [String]) throws(KilnError) -> String {
        // Length-prefixed, so no two field lists hash alike.
        try SHA256Digest.hex(of: Array(fields.map { "\($0.utf8.count):\($0)" }.joined(separator: "\n").utf8))
    }
}
