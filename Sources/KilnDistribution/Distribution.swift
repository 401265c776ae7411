import Foundation
import KilnMachine
import KilnStore
import KilnSupport
import KilnTemplate

/// Writes every distribute target from the build's final disk. The disk is converted once to a fixed VHD; each
/// target then gets that file under its own name (a hard link, or a sparse copy across file systems), so three
/// targets cost one conversion. Stored images are read-only files: builds boot overlays on them.
public struct Distribution {
    let store: StateStore
    let runID: String
    let runDirectory: String
    let templateLocation: String
    let source: SourceImage
    let guestOS: OSType
    let log: any BuildLog
    /// `--force`: a VHD target may replace an existing file.
    let force: Bool
    /// Where no VHD target may go (OutputDestination).
    let protected: [String]
    let events: @Sendable (ProgressEvent) -> Void

    public init(store: StateStore, runID: String, runDirectory: String, templateLocation: String, source: SourceImage, guestOS: OSType,
                log: any BuildLog, force: Bool, protected: [String], events: @escaping @Sendable (ProgressEvent) -> Void) {
        self.store = store
        self.runID = runID
        self.runDirectory = runDirectory
        self.templateLocation = templateLocation
        self.source = source
        self.guestOS = guestOS
        self.log = log
        self.force = force
        self.protected = protected
        self.events = events
    }

    /// The one conversion's file. Its name cannot be a VHD target's default name (`<runOutputName>.vhd`), whatever
    /// the runOutputName: a target named `.image` once got the scratch file's name, and the scratch file's removal
    /// took the output with it.
    static let scratchName = "distribution.vhd.partial"

    public func run(_ targets: [Distributor], disk: String, virtualSizeBytes: UInt64) async -> [RunOutput] {
        let artifact = runDirectory + "/" + Self.scratchName
        ProcessWatchdog.shared?.removeOnDeath(artifact)
        defer { try? FileManager.default.removeItem(atPath: artifact) }
        do {
            log.write("distribute", "converting the build's disk to a fixed VHD")
            try await VHDWriter.write(disk: disk, format: "qcow2", virtualSizeBytes: virtualSizeBytes, to: artifact)
            chmod(artifact, 0o444)
        } catch {
            log.write("distribute", "writing the VHD failed: \(error)")
            return targets.map { RunOutput(runOutputName: $0.runOutputName, type: $0.typeName, provisioningState: "Failed", error: "\(error)") }
        }
        let stored = StoredDisk(path: artifact, format: "vpc", firmware: source.firmware.rawValue, osType: guestOS.rawValue,
                                hasCloudInit: source.hasCloudInit, virtualSizeBytes: VHDWriter.roundedSize(virtualSizeBytes))
        var outputs: [RunOutput] = []
        for target in targets {
            var output = RunOutput(runOutputName: target.runOutputName, type: target.typeName, provisioningState: "Failed")
            do {
                try distribute(target, artifact: stored, into: &output)
                output.provisioningState = "Succeeded"
                log.write("distribute", "\(target.runOutputName) (\(target.typeName)): \(output.artifactId ?? output.artifactUri ?? "") at \(output.path ?? "")")
                events(.message("\(target.runOutputName) (\(target.typeName)): \(output.artifactId ?? output.artifactUri ?? "")"))
            } catch {
                output.error = "\(error)"
                log.write("distribute", "\(target.runOutputName) (\(target.typeName)) failed: \(error)")
                events(.warning("\(target.runOutputName) (\(target.typeName)) failed: \(error)"))
            }
            outputs.append(output)
        }
        return outputs
    }

    private func distribute(_ target: Distributor, artifact: StoredDisk, into output: inout RunOutput) throws(KilnError) {
        let tags = Dictionary(target.artifactTags.map { ($0.key, $0.value) }, uniquingKeysWith: { _, last in last })
        switch target.target {
        case .vhd(let vhd):
            let destination = Self.vhdDestination(vhd.uri, runOutputName: target.runOutputName, runDirectory: runDirectory)
            // Checked before the boot too; again here, because the file may have appeared during the build.
            if let local = Self.localPath(vhd.uri) {
                try OutputDestination.check(local, field: "the VHD target \(target.runOutputName)", force: force, protected: protected)
            }
            try Self.place(artifact.path, at: destination, replacing: force)
            output.path = destination
            output.artifactUri = vhd.uri.flatMap { $0.lowercased().hasPrefix("http") ? $0 : nil } ?? URL(fileURLWithPath: destination).absoluteString

        case .managedImage(let image):
            if let existing = try store.managedImage(id: image.imageId) {
                throw KilnError(.invalidState, "expected no managed image \(image.imageId) in the local store, found one from run \(existing.runID); remove it with kiln image remove \(existing.id)")
            }
            let path = try store.managedImagePath(for: image.imageId)
            try Self.place(artifact.path, at: path, replacing: false)
            var disk = artifact
            disk.path = path
            do {
                let record = try store.addManagedImage(id: image.imageId, location: image.location, tags: tags, disk: disk,
                                                       runID: runID, source: source.displayName)
                output.artifactId = record.id
                output.path = path
            } catch {
                try? FileManager.default.removeItem(atPath: path)
                throw error
            }

        case .sharedImage(let gallery):
            let accountType = gallery.storageAccountType ?? "Standard_LRS"
            var regions = gallery.targetRegions.map {
                TargetRegionRecord(name: $0.name, replicaCount: $0.replicaCount, storageAccountType: $0.storageAccountType ?? accountType)
            }
            if regions.isEmpty {
                regions = (gallery.replicationRegions.isEmpty ? [templateLocation] : gallery.replicationRegions)
                    .map { TargetRegionRecord(name: $0, replicaCount: 1, storageAccountType: accountType) }
            }
            let request = GalleryVersionRequest(galleryImageId: gallery.galleryImageId, versioning: gallery.versioning,
                                                sourceVersion: source.version, excludeFromLatest: gallery.excludeFromLatest,
                                                storageAccountType: accountType, targetRegions: regions, tags: tags, disk: artifact,
                                                runID: runID, source: source.displayName)
            let reservation = try store.reserveGalleryVersion(request)
            for notice in reservation.notices {
                log.write("distribute", notice)
                events(.message("notice: \(notice)"))
            }
            // Whether this build put the disk there: a file already at the path (the reason placing failed) is not
            // this build's to remove.
            var placed = false
            do {
                try Self.place(artifact.path, at: reservation.path, replacing: false)
                placed = true
                try store.completeGalleryVersion(reservation)
            } catch {
                store.abandonGalleryVersion(reservation, diskWritten: placed)
                throw error
            }
            output.artifactId = reservation.record.id
            output.path = reservation.path
        }
    }

    /// A VHD target's file: its `uri` when that names a local path, else `<runOutputName>.vhd` in the run directory.
    static func vhdDestination(_ uri: String?, runOutputName: String, runDirectory: String) -> String {
        localPath(uri) ?? runDirectory + "/" + runOutputName + ".vhd"
    }

    /// The local file a VHD target's `uri` names (an absolute path or a file:// URI); nil for none or a blob URL.
    public static func localPath(_ uri: String?) -> String? {
        guard let uri else { return nil }
        if uri.hasPrefix("/") { return uri }
        if uri.lowercased().hasPrefix("file://"), let url = URL(string: uri) { return url.path }
        return nil
    }

    /// Gives `artifact` a second name: a hard link, or a sparse copy when `destination` is on another file system.
    /// The destination appears complete or not at all. Without `replacing`, an existing destination is an error.
    static func place(_ artifact: String, at destination: String, replacing: Bool) throws(KilnError) {
        let directory = (destination as NSString).deletingLastPathComponent
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw KilnError(.io, "cannot create \(directory): \(error.localizedDescription)")
        }
        let temporary = directory + "/." + (destination as NSString).lastPathComponent + ".partial-\(getpid())"
        try? FileManager.default.removeItem(atPath: temporary)
        ProcessWatchdog.shared?.removeOnDeath(temporary)
        defer { try? FileManager.default.removeItem(atPath: temporary) }
        if link(artifact, temporary) != 0 {
            let linkError = errno
            guard linkError == EXDEV || linkError == EPERM else {
                throw KilnError(.io, "cannot link \(artifact) to \(temporary): \(String(cString: strerror(linkError)))")
            }
            let copy = try Subprocess.runBlocking("/bin/cp", ["--sparse=always", artifact, temporary], timeout: .seconds(6 * 3600)).get()
            guard copy.succeeded else {
                throw KilnError(.io, "cannot copy \(artifact) to \(temporary): cp exited with \(copy.status): \(copy.stderrText)")
            }
        }
        if replacing {
            try AtomicFile.rename(temporary, to: destination)
        } else if link(temporary, destination) != 0 {
            let reason = errno == EEXIST ? "a file is already there" : String(cString: strerror(errno))
            throw KilnError(.io, "cannot store the image at \(destination): \(reason)")
        }
    }
}
