import Foundation
import GRDB
import KilnSupport
import KilnTemplate

/// The disk behind a stored image: a file under the state directory's store/ that builds boot overlays on.
public struct StoredDisk: Codable, Sendable, Equatable {
    public var path: String
    /// qemu's format name (Kiln stores fixed VHDs: "vpc").
    public var format: String
    /// "bios" or "uefi" (Azure's HyperV generation V1 or V2).
    public var firmware: String
    public var osType: String?
    public var hasCloudInit: Bool?
    public var virtualSizeBytes: UInt64

    public init(path: String, format: String, firmware: String, osType: String?, hasCloudInit: Bool?, virtualSizeBytes: UInt64) {
        self.path = path
        self.format = format
        self.firmware = firmware
        self.osType = osType
        self.hasCloudInit = hasCloudInit
        self.virtualSizeBytes = virtualSizeBytes
    }

    public var hyperVGeneration: String { firmware == "uefi" ? "V2" : "V1" }
}

/// A local managed image (Microsoft.Compute/images), keyed by its resource ID.
public struct ManagedImageRecord: Sendable, Equatable {
    public var id: String
    public var location: String
    public var tags: [String: String]
    public var disk: StoredDisk
    public var runID: String
    public var source: String
    public var createdAt: Date
}

public struct TargetRegionRecord: Codable, Sendable, Equatable {
    public var name: String
    public var replicaCount: Int
    public var storageAccountType: String

    public init(name: String, replicaCount: Int, storageAccountType: String) {
        self.name = name
        self.replicaCount = replicaCount
        self.storageAccountType = storageAccountType
    }
}

/// A version in a local gallery image definition.
public struct GalleryVersionRecord: Sendable, Equatable {
    public var id: String
    public var galleryImageId: String
    public var version: GalleryVersion
    /// "Creating" while a build writes it, then "Succeeded".
    public var state: String
    public var excludeFromLatest: Bool
    public var storageAccountType: String
    public var targetRegions: [TargetRegionRecord]
    public var tags: [String: String]
    public var disk: StoredDisk
    public var runID: String
    public var source: String
    public var createdAt: Date
}

/// What a build asks of the gallery when it distributes to a SharedImage target.
public struct GalleryVersionRequest: Sendable {
    /// The gallery image definition (any `/versions/...` suffix is the explicit version).
    public var galleryImageId: String
    public var versioning: VersioningScheme?
    /// The source image's version, for the Source scheme.
    public var sourceVersion: String?
    public var excludeFromLatest: Bool
    public var storageAccountType: String
    public var targetRegions: [TargetRegionRecord]
    public var tags: [String: String]
    public var disk: StoredDisk
    public var runID: String
    public var source: String

    public init(galleryImageId: String, versioning: VersioningScheme?, sourceVersion: String?, excludeFromLatest: Bool,
                storageAccountType: String, targetRegions: [TargetRegionRecord], tags: [String: String], disk: StoredDisk,
                runID: String, source: String) {
        self.galleryImageId = galleryImageId
        self.versioning = versioning
        self.sourceVersion = sourceVersion
        self.excludeFromLatest = excludeFromLatest
        self.storageAccountType = storageAccountType
        self.targetRegions = targetRegions
        self.tags = tags
        self.disk = disk
        self.runID = runID
        self.source = source
    }
}

/// A version allocated to a build: it exists (state Creating, invisible to `latest`) until the build completes or
/// abandons it, so two builds finishing at once never get the same number.
public struct GalleryReservation: Sendable {
    public var record: GalleryVersionRecord
    /// Where the build must put the disk (created exclusively; the store owns it afterwards).
    public var path: String
    /// Things created on first use (the gallery, the image definition), for the user to hear about.
    public var notices: [String]
}

struct ManagedImageRow: Codable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "managedImages"
    var key: String
    var id: String
    var location: String
    var tags: String
    var path: String
    var format: String
    var firmware: String
    var osType: String?
    var hasCloudInit: Bool?
    var virtualSizeBytes: Int64
    var runID: String
    var source: String
    var createdAt: Date

    var record: ManagedImageRecord {
        ManagedImageRecord(id: id, location: location, tags: JSONColumn.decode([String: String].self, tags) ?? [:],
                           disk: StoredDisk(path: path, format: format, firmware: firmware, osType: osType, hasCloudInit: hasCloudInit,
                                            virtualSizeBytes: UInt64(virtualSizeBytes)),
                           runID: runID, source: source, createdAt: createdAt)
    }
}

struct GalleryRow: Codable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "galleries"
    var key: String
    var id: String
    var createdAt: Date
}

struct GalleryImageRow: Codable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "galleryImages"
    var key: String
    var id: String
    var galleryKey: String
    var osType: String?
    var firmware: String
    var createdAt: Date
}

struct GalleryVersionRow: Codable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "galleryVersions"
    var imageKey: String
    var major: Int
    var minor: Int
    var patch: Int
    var id: String
    var state: String
    var owner: String
    var excludeFromLatest: Bool
    var storageAccountType: String
    var targetRegions: String
    var tags: String
    var path: String
    var format: String
    var firmware: String
    var osType: String?
    var hasCloudInit: Bool?
    var virtualSizeBytes: Int64
    var runID: String
    var source: String
    var createdAt: Date

    var version: GalleryVersion { GalleryVersion(major: major, minor: minor, patch: patch) }

    /// A reservation whose build process is gone: it will never complete.
    var isStale: Bool { state == "Creating" && ProcessIdentity(owner)?.isAlive != true }

    func record(galleryImageId: String) -> GalleryVersionRecord {
        GalleryVersionRecord(id: id, galleryImageId: galleryImageId, version: version, state: state, excludeFromLatest: excludeFromLatest,
                             storageAccountType: storageAccountType,
                             targetRegions: JSONColumn.decode([TargetRegionRecord].self, targetRegions) ?? [],
                             tags: JSONColumn.decode([String: String].self, tags) ?? [:],
                             disk: StoredDisk(path: path, format: format, firmware: firmware, osType: osType, hasCloudInit: hasCloudInit,
                                              virtualSizeBytes: UInt64(virtualSizeBytes)),
                             runID: runID, source: source, createdAt: createdAt)
    }
}
