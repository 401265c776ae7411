import Foundation
import GRDB
import KilnSupport
import KilnTemplate

extension StateStore {
    // MARK: managed images

    /// Where a managed image's disk goes; the caller creates it, then calls `addManagedImage`.
    public func managedImagePath(for imageId: String) throws(KilnError) -> String {
        let id = try Self.parse(imageId, shape: .managedImage, what: "managed image")
        return storePath + "/images/" + Self.pathComponents(of: id).joined(separator: "/") + ".vhd"
    }

    /// Records a managed image whose disk is already at `disk.path`. An existing image with that ID is an error:
    /// Kiln never replaces an image another build may be using as its source.
    public func addManagedImage(id imageId: String, location: String, tags: [String: String], disk: StoredDisk,
                                runID: String, source: String) throws(KilnError) -> ManagedImageRecord {
        let id = try Self.parse(imageId, shape: .managedImage, what: "managed image")
        let row = ManagedImageRow(key: id.key, id: id.description, location: location, tags: JSONColumn.encode(tags), path: disk.path,
                                  format: disk.format, firmware: disk.firmware, osType: disk.osType, hasCloudInit: disk.hasCloudInit,
                                  virtualSizeBytes: Int64(disk.virtualSizeBytes), runID: runID, source: source, createdAt: Date())
        try write("record managed image \(id)") { db in
            if let existing = try ManagedImageRow.fetchOne(db, key: id.key) {
                throw KilnError(.invalidState, "expected no managed image \(id) in the local store, found one from run \(existing.runID) (\(existing.createdAt)); remove it with kiln image remove \(id)")
            }
            try row.insert(db)
        }
        return row.record
    }

    public func managedImage(id imageId: String) throws(KilnError) -> ManagedImageRecord? {
        let key = ResourceID(imageId)?.key ?? imageId.lowercased()
        return try read("managed image \(imageId)") { db in try ManagedImageRow.fetchOne(db, key: key)?.record }
    }

    public func managedImages() throws(KilnError) -> [ManagedImageRecord] {
        try read("managed images") { db in try ManagedImageRow.order(Column("key")).fetchAll(db).map(\.record) }
    }

    // MARK: galleries

    /// Allocates the version for a SharedImage target, creating the gallery and image definition on first use.
    /// Runs in one IMMEDIATE transaction, so concurrent builds get distinct, increasing versions.
    public func reserveGalleryVersion(_ request: GalleryVersionRequest, owner: ProcessIdentity = .current) throws(KilnError) -> GalleryReservation {
        let given = try Self.parse(request.galleryImageId, shape: .galleryImage, what: "gallery image")
        var explicit: GalleryVersion?
        var imageID = given
        if given.segments.count == 3 {
            explicit = GalleryVersion(given.name)
            imageID.segments.removeLast()
        }
        var galleryID = imageID
        galleryID.segments.removeLast()
        let imageKey = imageID.key
        let directory = storePath + "/galleries/" + Self.pathComponents(of: imageID).joined(separator: "/")

        return try write("allocate a version of \(imageID)") { db -> GalleryReservation in
            var notices: [String] = []
            if try GalleryRow.fetchOne(db, key: galleryID.key) == nil {
                try GalleryRow(key: galleryID.key, id: galleryID.description, createdAt: Date()).insert(db)
                notices.append("created the local gallery \(galleryID)")
            }
            if let definition = try GalleryImageRow.fetchOne(db, key: imageKey) {
                if definition.firmware != request.disk.firmware {
                    let want = request.disk.hyperVGeneration
                    let have = definition.firmware == "uefi" ? "V2" : "V1"
                    throw KilnError(.invalidState, "expected an image definition with HyperV generation \(want) for this \(want) image, found \(imageID) with \(have)")
                }
            } else {
                try GalleryImageRow(key: imageKey, id: imageID.description, galleryKey: galleryID.key, osType: request.disk.osType,
                                    firmware: request.disk.firmware, createdAt: Date()).insert(db)
                notices.append("created the image definition \(imageID) (\(request.disk.osType ?? "Linux"), HyperV generation \(request.disk.hyperVGeneration))")
            }

            var rows = try GalleryVersionRow.filter(Column("imageKey") == imageKey).fetchAll(db)
            for stale in rows where stale.isStale {
                try stale.delete(db)
                if try !Self.isDiskReferenced(db, path: stale.path) { Self.removeDisk(stale.path) }
            }
            rows.removeAll(where: \.isStale)
            let existing = rows.map(\.version)

            let version: GalleryVersion
            if let explicit {
                version = explicit
            } else {
                switch request.versioning ?? .latest(major: nil) {
                case .latest(let requested):
                    let major = requested.flatMap { $0 >= 0 ? $0 : nil }
                    let database = major.map { wanted in existing.filter { $0.major == wanted } } ?? existing
                    if let newest = database.max() {
                        version = GalleryVersion(major: newest.major, minor: newest.minor, patch: newest.patch + 1)
                    } else {
                        version = GalleryVersion(major: major ?? 1, minor: 0, patch: 0)
                    }
                case .source:
                    guard let text = request.sourceVersion, let parsed = GalleryVersion(text) else {
                        throw KilnError(.invalidArgument, "versioning scheme Source expects a source image whose version is major.minor.patch, found \(request.sourceVersion.map { "\"\($0)\"" } ?? "a source without a version") (\(request.source))")
                    }
                    version = parsed
                }
            }
            if let clash = rows.first(where: { $0.version == version }) {
                throw KilnError(.invalidState, "expected a new version \(version) of \(imageID), found an existing one (\(clash.state), from run \(clash.runID)); remove it with kiln image remove \(clash.id) or choose another version")
            }
            var versionID = imageID
            versionID.segments.append(.init(type: "versions", name: version.description))
            let path = directory + "/\(version).vhd"
            let row = GalleryVersionRow(imageKey: imageKey, major: version.major, minor: version.minor, patch: version.patch,
                                        id: versionID.description, state: "Creating", owner: owner.description,
                                        excludeFromLatest: request.excludeFromLatest, storageAccountType: request.storageAccountType,
                                        targetRegions: JSONColumn.encode(request.targetRegions), tags: JSONColumn.encode(request.tags),
                                        path: path, format: request.disk.format, firmware: request.disk.firmware,
                                        osType: request.disk.osType, hasCloudInit: request.disk.hasCloudInit,
                                        virtualSizeBytes: Int64(request.disk.virtualSizeBytes), runID: request.runID,
                                        source: request.source, createdAt: Date())
            try row.insert(db)
            return GalleryReservation(record: row.record(galleryImageId: imageID.description), path: path, notices: notices)
        }
    }

    /// Marks a reserved version Succeeded: from now on `latest` may pick it.
    public func completeGalleryVersion(_ reservation: GalleryReservation) throws(KilnError) {
        let id = reservation.record.id
        try write("complete gallery version \(id)") { db in
            try db.execute(sql: "UPDATE galleryVersions SET state = 'Succeeded', createdAt = ? WHERE lower(id) = ? AND state = 'Creating'",
                           arguments: [Date(), id.lowercased()])
            guard db.changesCount == 1 else {
                throw KilnError(.invalidState, "the reservation of \(id) disappeared before the build completed it")
            }
        }
    }

    /// Gives a reserved version back after a failed write. Only what the build made goes: its disk when
    /// `diskWritten` (the build put it at the reservation's path), and not even that while another record names the
    /// same file. A file that was at the path before the build (the reason its write failed) stays.
    public func abandonGalleryVersion(_ reservation: GalleryReservation, diskWritten: Bool) {
        _ = try? write("abandon gallery version \(reservation.record.id)") { db in
            try db.execute(sql: "DELETE FROM galleryVersions WHERE lower(id) = ? AND state = 'Creating'",
                           arguments: [reservation.record.id.lowercased()])
            if diskWritten, try !Self.isDiskReferenced(db, path: reservation.path) {
                Self.removeDisk(reservation.path)
            }
        }
    }

    /// Every version of every local gallery image, completed or in progress.
    public func galleryVersions() throws(KilnError) -> [GalleryVersionRecord] {
        try read("gallery versions") { db in
            let images = Dictionary(try GalleryImageRow.fetchAll(db).map { ($0.key, $0.id) }, uniquingKeysWith: { first, _ in first })
            return try GalleryVersionRow.order(Column("imageKey"), Column("major"), Column("minor"), Column("patch")).fetchAll(db)
                .filter { !$0.isStale }
                .map { $0.record(galleryImageId: images[$0.imageKey] ?? $0.imageKey) }
        }
    }

    /// Resolves a SharedImageVersion source: an exact version, or `latest` (the highest completed version not
    /// excluded from latest). The error lists what the gallery image holds.
    public func resolveGalleryVersion(_ imageVersionId: String) throws(KilnError) -> GalleryVersionRecord {
        let id = try Self.parse(imageVersionId, shape: .galleryImageVersion, what: "gallery image version")
        var imageID = id
        imageID.segments.removeLast()
        let versions = try galleryVersions().filter { $0.galleryImageId.lowercased() == imageID.key && $0.state == "Succeeded" }
        let available = versions.isEmpty ? "it has no versions" : "it has " + versions.map { $0.version.description + ($0.excludeFromLatest ? " (excluded from latest)" : "") }.joined(separator: ", ")
        if id.name.caseInsensitiveEquals("latest") {
            guard let newest = versions.filter({ !$0.excludeFromLatest }).max(by: { $0.version < $1.version }) else {
                throw KilnError(.notFound, "expected a gallery image version for \(imageVersionId) in the local store, found none that latest can pick (\(available))")
            }
            return newest
        }
        guard let exact = versions.first(where: { $0.id.lowercased() == id.key }) else {
            throw KilnError(.notFound, "expected gallery image version \(imageVersionId) in the local store, found none (\(available))")
        }
        return exact
    }

    // MARK: removal

    /// What `kiln image remove ID` removed.
    public enum RemovedImage: Sendable {
        case managedImage(ManagedImageRecord)
        case galleryVersion(GalleryVersionRecord)

        public var disk: StoredDisk {
            switch self {
            case .managedImage(let record): record.disk
            case .galleryVersion(let record): record.disk
            }
        }
    }

    /// Removes a managed image or a gallery version, and its disk. A version being written is refused.
    public func removeImage(id text: String) throws(KilnError) -> RemovedImage {
        guard let id = ResourceID(text) else {
            throw KilnError(.invalidArgument, "expected a managed image or gallery image version resource ID, found \"\(text)\"")
        }
        let removed: RemovedImage = try write("remove \(id)") { db in
            let removed: RemovedImage
            if let image = try ManagedImageRow.fetchOne(db, key: id.key) {
                try image.delete(db)
                removed = .managedImage(image.record)
            } else if let row = try GalleryVersionRow.filter(sql: "lower(id) = ?", arguments: [id.key]).fetchOne(db) {
                guard row.state != "Creating" || row.isStale else {
                    throw KilnError(.invalidState, "gallery version \(row.id) is being written by run \(row.runID); wait for it to finish")
                }
                try row.delete(db)
                removed = .galleryVersion(row.record(galleryImageId: row.imageKey))
            } else {
                throw KilnError(.notFound, "expected a managed image or gallery image version \(id) in the local store, found none (kiln image list shows them)")
            }
            if try !Self.isDiskReferenced(db, path: removed.disk.path) { Self.removeDisk(removed.disk.path) }
            return removed
        }
        return removed
    }

    // MARK: helpers

    static func parse(_ text: String, shape: ResourceIDShape, what: String) throws(KilnError) -> ResourceID {
        if let problem = shape.problem(with: text) {
            throw KilnError(.invalidArgument, "\(what): \(problem)")
        }
        guard let id = ResourceID(text) else {
            throw KilnError(.invalidArgument, "\(what): expected \(shape.expectedForm), found \"\(text)\"")
        }
        return id
    }

    /// Folder names for a resource ID under store/: subscription, resource group and each name, lower case (IDs
    /// are case-insensitive: the key is lower case too), with every UTF-8 byte outside `a-z`, `0-9`, `-` and `.`
    /// percent-encoded, `%` and `_` included, and a leading `.` too (no name is `.`, `..` or hidden). The encoding
    /// is injective, so two IDs never share a folder: `rg(1)` is `rg%281%29`, `rg_1_` is `rg%5F1%5F`. (Stores written
    /// before replaced each such character with `_`; their records keep the path they were written at, so they
    /// still read, and new images go to the new folders.)
    static func pathComponents(of id: ResourceID) -> [String] {
        ([id.subscriptionId, id.resourceGroup] + id.segments.map(\.name)).map(folderName)
    }

    static func folderName(_ name: String) -> String {
        var encoded = ""
        for (offset, byte) in name.lowercased().utf8.enumerated() {
            let plain = (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
                || byte == UInt8(ascii: "-") || (byte == UInt8(ascii: ".") && offset > 0)
            if plain {
                encoded.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                encoded += "%" + (byte < 0x10 ? "0" : "") + String(byte, radix: 16, uppercase: true)
            }
        }
        return encoded
    }

    /// Whether any record other than the gallery version `exceptID` names `path` as its disk. A store written before
    /// folder names were injective may hold two IDs whose disks share a path: neither may take the other's with it.
    static func isDiskReferenced(_ db: Database, path: String, exceptGalleryVersion exceptID: String? = nil) throws -> Bool {
        let images = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM managedImages WHERE path = ?", arguments: [path]) ?? 0
        let versions = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM galleryVersions WHERE path = ? AND lower(id) != ?",
                                        arguments: [path, exceptID?.lowercased() ?? ""]) ?? 0
        return images + versions > 0
    }

    /// Removes a stored disk file: unlink, never a recursive removal, so a path that is (somehow) a folder stays.
    static func removeDisk(_ path: String) {
        _ = unlink(path)
    }
}
