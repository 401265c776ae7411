import Foundation
import KilnDigest
import KilnLibvirt
import KilnSupport

/// The volumes of one build on a remote host, and the source volume they sit on.
final class RemoteDisks: @unchecked Sendable {
    let remote: RemoteHost
    let pool: LibvirtStoragePool
    /// The overlay the guest writes to now (a checkpoint moves it to a new one).
    private(set) var overlay: LibvirtStorageVolume
    /// The checkpoint layers under `overlay`, oldest first (none without checkpoints).
    private(set) var layers: [RemoteLayer]
    private(set) var seed: LibvirtStorageVolume?
    /// The pool's directory on the host: the console log and UEFI variables go there.
    let directory: String
    let runID: String

    private init(remote: RemoteHost, pool: LibvirtStoragePool, overlay: LibvirtStorageVolume, layers: [RemoteLayer], runID: String) {
        self.remote = remote
        self.pool = pool
        self.overlay = overlay
        self.layers = layers
        self.runID = runID
        directory = (overlay.path as NSString).deletingLastPathComponent
    }

    var consolePath: String { directory + "/kiln-\(runID)-console.log" }
    var nvramPath: String { directory + "/kiln-\(runID)-nvram.fd" }

    /// The source in the pool (uploaded unless a complete copy is there) and the overlay `overlayName` on it, of
    /// `capacityBytes` (the source's size at least).
    static func prepare(_ remote: RemoteHost, connection: LibvirtConnection, source image: SourceImage, capacityBytes: UInt64, runID: String,
                        overlayName: String, digests: SourceDigests, events: @escaping @Sendable (String) -> Void) async throws(KilnError) -> RemoteDisks {
        let pool = try await storagePool(remote, connection: connection)
        let format = try volumeFormat(image.format)
        let source = try await uploadedSource(image, format: format, into: pool, host: remote.host, digests: digests, events: events)
        let overlay = try await pool.createVolume(.overlay(name: overlayName, on: source, backingFormat: format, capacityBytes: capacityBytes))
        events("overlay \(overlay.path) on \(remote.host), on \(source.name) (the source volume is opened read-only)")
        return RemoteDisks(remote: remote, pool: pool, overlay: overlay, layers: [], runID: runID)
    }

    /// For a guest resumed from a checkpoint taken on this host: this run's overlay on the checkpoint's layer, and
    /// its UEFI variables copied there. A checkpoint whose volumes are gone is `.notFound`.
    static func prepareResumed(_ remote: RemoteHost, connection: LibvirtConnection, files: RemoteCheckpointFiles, capacityBytes: UInt64,
                               runID: String, overlayName: String, events: @escaping @Sendable (String) -> Void) async throws(KilnError) -> RemoteDisks {
        guard files.uri == remote.uri, files.pool == remote.pool else {
            throw KilnError(.notFound, "the checkpoint's volumes are in pool \(files.pool) of \(files.uri), not in pool \(remote.pool) of \(remote.uri)")
        }
        let pool = try await storagePool(remote, connection: connection)
        try await refreshed(pool)
        var found: [String: LibvirtStorageVolume] = [:]
        for name in files.layers.map(\.volume) + [files.memoryVolume] + (files.nvramVolume.map { [$0] } ?? []) {
            do {
                found[name] = try await pool.volume(named: name)
            } catch where error.code == .notFound {
                throw KilnError(.notFound, "the checkpoint's volume \(name) is gone from pool \(remote.pool) on \(remote.host)", cause: error)
            }
        }
        guard let top = found[files.diskVolume] else { throw KilnError(.internalError, "the checkpoint's disk \(files.diskVolume) is not among its layers") }
        let overlay = try await pool.createVolume(.overlay(name: overlayName, on: top, backingFormat: .qcow2, capacityBytes: capacityBytes))
        let disks = RemoteDisks(remote: remote, pool: pool, overlay: overlay, layers: files.layers, runID: runID)
        if let nvram = files.nvramVolume.flatMap({ found[$0] }) {
            _ = try await pool.cloneVolume(nvram, as: (disks.nvramPath as NSString).lastPathComponent)
        }
        events("overlay \(overlay.path) on \(remote.host), on the checkpoint's layer \(top.name)")
        return disks
    }

    static func storagePool(_ remote: RemoteHost, connection: LibvirtConnection) async throws(KilnError) -> LibvirtStoragePool {
        do {
            return try await connection.storagePool(named: remote.pool)
        } catch where error.code == .notFound {
            throw KilnError(.notFound, "the storage pool \(remote.pool) does not exist on \(remote.host): `kiln doctor --connect \(ShellQuote.quote(remote.uri)) --pool \(remote.pool)` prints the commands that make it, or name another pool with --pool", cause: error)
        }
    }

    /// Refreshes the pool so libvirt lists the files QEMU made there (a snapshot's overlay and memory image, the
    /// UEFI variables). libvirt refuses while another build creates a volume in the pool: tried again then.
    static func refreshed(_ pool: LibvirtStoragePool) async throws(KilnError) {
        var attempt = 0
        while true {
            do {
                try await pool.refresh()
                return
            } catch {
                attempt += 1
                if attempt >= 20 { throw error }
                do { try await Task.sleep(for: .milliseconds(250)) } catch { throw KilnError(.cancelled, "cancelled while refreshing pool \(pool.name)") }
            }
        }
    }

    /// After a snapshot: the overlay the guest left is the checkpoint's layer, the one it runs on now is
    /// `nextOverlay`; the memory image QEMU wrote and (UEFI) a copy of the variables are the checkpoint's.
    func checkpointTaken(folder: String, nextOverlay: String, localLayerCopy: String, uefi: Bool) async throws(KilnError) -> RemoteCheckpointFiles {
        try await Self.refreshed(pool)
        let layer = overlay
        let next = try await pool.volume(named: nextOverlay)
        let memory = try await pool.volume(named: RemoteCheckpointFiles.volumeName(folder: folder, kind: "memory"))
        var nvram: LibvirtStorageVolume?
        if uefi {
            let running = try await pool.volume(named: (nvramPath as NSString).lastPathComponent)
            nvram = try await pool.cloneVolume(running, as: RemoteCheckpointFiles.volumeName(folder: folder, kind: "nvram"))
        }
        overlay = next
        layers.append(RemoteLayer(volume: layer.name, localCopy: localLayerCopy))
        var bytes: UInt64 = 0
        for volume in [memory, layer] + (nvram.map { [$0] } ?? []) { bytes += (try? await volume.size().allocationBytes) ?? 0 }
        return RemoteCheckpointFiles(uri: remote.uri, pool: remote.pool, poolDirectory: directory, memoryVolume: memory.name, diskVolume: layer.name,
                                     nvramVolume: nvram?.name, layers: layers, bytes: bytes)
    }

    static func volumeFormat(_ format: String) throws(KilnError) -> StorageVolumeSpec.Format {
        guard let known = StorageVolumeSpec.Format(rawValue: format) else {
            throw KilnError(.unsupported, "a source in format \(format) cannot go to a remote host's pool (raw, qcow2 and vpc can)")
        }
        return known
    }

    /// The source's volume, named by the file's sha256: uploaded the first time, found afterwards. A marker
    /// volume (`….complete`) is made once the upload finished. Several builds may want the same source on one host at
    /// once: only the one that creates the volume uploads; the others wait for its marker while the volume grows. A
    /// volume without its marker whose file does not change for `stalledAfter` (an upload cut off, its build gone) is
    /// uploaded again by the one build that creates the `….reclaim` volume first, and only if the volume is still that
    /// same unchanged file: no build deletes another's upload.
    /// `digests` remembers the file's sha256 until the file changes (nil: read it every time).
    static func uploadedSource(_ image: SourceImage, format: StorageVolumeSpec.Format, into pool: LibvirtStoragePool, host: String,
                               digests: SourceDigests? = nil, stalledAfter: Duration = .seconds(60),
                               events: @escaping @Sendable (String) -> Void) async throws(KilnError) -> LibvirtStorageVolume {
        let clock = ContinuousClock()
        let hashingStart = clock.now
        let path = image.path
        let (sha256, remembered) = try await Blocking.run { () throws(KilnError) -> (String, Bool) in
            if let digests { return try digests.sha256(ofFile: path) }
            return (try SHA256Digest.hex(ofFile: path), false)
        }
        let fileBytes = FileSize.bytes(path)
        events("source \(image.displayName): sha256 \(sha256.prefix(16))… "
               + (remembered ? "(remembered: the file is unchanged since it was read)" : "(\(DurationText.format(clock.now - hashingStart)))"))
        let name = "kiln-source-\(sha256).\(format.rawValue)"
        let marker = "kiln-source-\(sha256).complete", reclaimName = "kiln-source-\(sha256).reclaim"
        // Volumes libvirt did not make itself (a daemon restarted since) are seen after a refresh; one is refused while
        // another build creates a volume there, and libvirt's own list is then current.
        try? await pool.refresh()
        for _ in 0..<6 {
            var reclaim: LibvirtStorageVolume?
            if let existing = try? await pool.volume(named: name) {
                if (try? await pool.volume(named: marker)) != nil {
                    events("source volume \(name) is on \(host) already")
                    return existing
                }
                events("source volume \(name) on \(host) is not complete: waiting while another build uploads it")
                switch try await awaitUpload(of: existing, marker: marker, in: pool, stalledAfter: stalledAfter) {
                case .completed:
                    events("source volume \(name) on \(host) was completed by another build")
                    return existing
                case .gone:
                    continue  // removed by the build that uploads it again: look again
                case .stalled(let stamp):
                    do {
                        reclaim = try await pool.createVolume(StorageVolumeSpec(name: reclaimName, capacityBytes: 0, format: .raw))
                    } catch where error.code == .alreadyExists {
                        continue  // another build is uploading it again: wait for that one
                    }
                    // Still the same untouched file? Another build may have replaced it since the last look.
                    guard let now = try? await pool.volume(named: name).stamp(), now == stamp else {
                        try? await reclaim?.delete()
                        continue
                    }
                    events("source volume \(name) on \(host) stopped growing without being completed: uploading it again")
                    try? await existing.delete()
                }
            }
            // Room for the source and the build's first writes, or the upload would end in "no space left" minutes later.
            if let space = try? await pool.space(), space.availableBytes < fileBytes + minimumBuildBytes {
                try? await reclaim?.delete()
                throw KilnError(.io, "the storage pool \(pool.name) on \(host) has \(ByteSize.format(space.availableBytes)) free: "
                                + "the source needs \(ByteSize.format(fileBytes)) and the build's disk \(ByteSize.format(minimumBuildBytes)) more; "
                                + "free space in the pool's directory there, or name another pool with --pool")
            }
            // A marker whose volume is gone would vouch for this upload before it ends: removed first.
            if let staleMarker = try? await pool.volume(named: marker) { try? await staleMarker.delete() }
            // The file's bytes as they are (a qcow2 file stays a qcow2 file): QEMU and the overlay name its format.
            let volume: LibvirtStorageVolume
            do {
                volume = try await pool.createVolume(StorageVolumeSpec(name: name, capacityBytes: fileBytes, format: .raw))
                try? await reclaim?.delete()
            } catch where error.code == .alreadyExists {
                try? await reclaim?.delete()
                continue  // another build created it a moment ago: wait for that one's upload
            } catch {
                try? await reclaim?.delete()
                throw error
            }
            let uploadStart = clock.now
            do {
                try await volume.upload(from: path)
                _ = try await pool.createVolume(StorageVolumeSpec(name: marker, capacityBytes: 0, format: .raw))
            } catch {
                try? await volume.delete()
                throw error
            }
            let seconds = (clock.now - uploadStart).inSeconds
            events("uploaded the source to \(host) as \(name): \(ByteSize.format(fileBytes)) in \(DurationText.format(clock.now - uploadStart))"
                   + (seconds > 0 ? String(format: " (%.1f MiB/s)", Double(fileBytes) / 1_048_576 / seconds) : ""))
            return volume
        }
        throw KilnError(.external, "the source volume \(name) on \(host) was neither completed nor uploaded again after six looks; "
                        + "if no other build uses it, remove it and \(reclaimName) (virsh vol-delete --pool \(pool.name) NAME) and build again")
    }

    /// What a build's overlay is given room for, beyond the source, before the upload starts.
    static let minimumBuildBytes: UInt64 = 1 << 30

    enum UploadWait: Equatable {
        case completed
        case gone
        /// Unchanged for the whole wait, as last read.
        case stalled(StorageVolumeStamp)
    }

    /// Waits while another build uploads `volume`: until its `marker` exists, the volume is gone, or its file has not
    /// changed for `stalledAfter`.
    static func awaitUpload(of volume: LibvirtStorageVolume, marker: String, in pool: LibvirtStoragePool,
                            stalledAfter: Duration) async throws(KilnError) -> UploadWait {
        let clock = ContinuousClock()
        var last: StorageVolumeStamp?
        var lastChange = clock.now
        while true {
            if (try? await pool.volume(named: marker)) != nil { return .completed }
            // A deleted volume cannot be described: its uploader gave up and removed it, or another build reclaimed it.
            guard let stamp = try? await volume.stamp() else { return .gone }
            if stamp != last {
                last = stamp
                lastChange = clock.now
            } else if clock.now - lastChange >= stalledAfter {
                return .stalled(stamp)
            }
            do { try await Task.sleep(for: .milliseconds(500)) } catch { throw KilnError(.cancelled, "cancelled while waiting for another build's upload") }
        }
    }

    /// The NoCloud seed, made here, as a volume of its own.
    func uploadSeed(from localPath: String) async throws(KilnError) {
        let bytes = FileSize.bytes(localPath)
        let volume = try await pool.createVolume(StorageVolumeSpec(name: "kiln-\(runID)-seed.iso", capacityBytes: bytes, format: .raw))
        seed = volume
        try await volume.upload(from: localPath)
    }

    /// The guest's disk brought here: the checkpoint layers it stands on (each kept as a copy in its checkpoint's
    /// folder, fetched only if that copy is missing) and its overlay, downloaded to `localPath`, each put on the
    /// one below and the first on the local copy of the source (the same file whose sha256 named the volume), so
    /// the outputs are made here.
    func fetchOverlay(to localPath: String, source image: SourceImage, events: @escaping @Sendable (String) -> Void) async throws(KilnError) {
        let clock = ContinuousClock()
        let start = clock.now
        var below = (path: image.path, format: image.format)
        var bytes: UInt64 = 0
        var fetchedLayers = 0
        for layer in layers {
            if !FileManager.default.fileExists(atPath: layer.localCopy) {
                let partial = layer.localCopy + ".part"
                try? FileManager.default.removeItem(atPath: partial)
                try await Self.fetch(pool.volume(named: layer.volume), to: partial, onto: below)
                do {
                    try FileManager.default.moveItem(atPath: partial, toPath: layer.localCopy)
                } catch {
                    throw KilnError(.io, "cannot keep the checkpoint layer's copy \(layer.localCopy): \(error.localizedDescription)")
                }
                bytes += FileSize.bytes(layer.localCopy)
                fetchedLayers += 1
            }
            below = (layer.localCopy, "qcow2")
        }
        try await Self.fetch(overlay, to: localPath, onto: below)
        bytes += FileSize.bytes(localPath)
        let kept = layers.count - fetchedLayers
        events("fetched the build's overlay from the host: \(ByteSize.format(bytes)) in \(DurationText.format(clock.now - start)), on \(image.displayName) here"
               + (layers.isEmpty ? "" : " through \(layers.count) checkpoint layer(s) (\(fetchedLayers) fetched, \(kept) already here)"))
    }

    /// A qcow2 volume downloaded to `path` here and put on `below`, a file here (its bytes unchanged: `rebase -u`).
    private static func fetch(_ volume: LibvirtStorageVolume, to path: String, onto below: (path: String, format: String)) async throws(KilnError) {
        try await volume.download(to: path)
        try await Subprocess.check("qemu-img", ["rebase", "-u", "-f", "qcow2", "-F", below.format, "-b", below.path, path], timeout: .seconds(120))
    }

    /// Deletes the build's volumes and files in the pool (the source volume stays for later builds).
    func delete() async {
        try? await overlay.delete()
        try? await seed?.delete()
        try? await pool.refresh()
        for path in [consolePath, nvramPath] {
            if let file = try? await pool.volume(named: (path as NSString).lastPathComponent) { try? await file.delete() }
        }
    }
}

