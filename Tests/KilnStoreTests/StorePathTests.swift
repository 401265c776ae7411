import Foundation
import KilnStore
import KilnSupport
import KilnTemplate
import Testing

/// Where stored disks go: one folder per resource ID, never shared by two IDs; and what giving a version back or
/// removing an image may delete.
@Suite("Store paths and removal")
struct StorePathTests {
    static func base(_ group: String) -> String {
        "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/\(group)/providers/Microsoft.Compute"
    }

    @Test func resourceIDsThatDifferMapToDifferentFolders() throws {
        let temp = TemporaryState()
        let store = try StateStore.open(temp.state)
        // ARM names may hold ( ) _ . - : the old mapping sent ( and ) to _, so these two shared a folder.
        let first = try store.managedImagePath(for: Self.base("rg(1)") + "/images/golden")
        let second = try store.managedImagePath(for: Self.base("rg_1_") + "/images/golden")
        #expect(first != second)
        #expect(first.contains("/rg%281%29/"), "\(first)")
        #expect(second.contains("/rg%5F1%5F/"), "\(second)")
        // IDs are case-insensitive: one folder for any case.
        #expect(try store.managedImagePath(for: Self.base("RG(1)") + "/images/GOLDEN") == first)
        // Names that would be special as folder names are encoded, and % itself is.
        let dotted = try store.managedImagePath(for: Self.base("rg") + "/images/.hidden")
        #expect(dotted.hasSuffix("/rg/%2Ehidden.vhd"), "\(dotted)")
        #expect(try store.managedImagePath(for: Self.base("a%28b") + "/images/x").contains("/a%2528b/"))
        #expect(try store.managedImagePath(for: Self.base("a(b") + "/images/x").contains("/a%28b/"))

        // Gallery versions too.
        let one = try store.reserveGalleryVersion(request(Self.base("rg(1)") + "/galleries/gal/images/deb"))
        let two = try store.reserveGalleryVersion(request(Self.base("rg_1_") + "/galleries/gal/images/deb"))
        #expect(one.record.version == two.record.version)
        #expect(one.path != two.path)
    }

    @Test func abandoningAVersionRemovesOnlyWhatTheBuildWrote() throws {
        let temp = TemporaryState()
        let store = try StateStore.open(temp.state)
        // A file at the version's path that the build did not write (why its write failed) stays.
        let reservation = try store.reserveGalleryVersion(request(galleryImage + "/versions/2.0.0"))
        try FileManager.default.createDirectory(atPath: (reservation.path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        #expect(FileManager.default.createFile(atPath: reservation.path, contents: Data("someone else's disk".utf8)))
        store.abandonGalleryVersion(reservation, diskWritten: false)
        #expect(try String(contentsOfFile: reservation.path, encoding: .utf8) == "someone else's disk")
        #expect(try store.galleryVersions().isEmpty, "the reservation itself is given back")

        // What the build wrote goes.
        let again = try store.reserveGalleryVersion(request(galleryImage + "/versions/2.0.1"))
        #expect(FileManager.default.createFile(atPath: again.path, contents: Data("this build's disk".utf8)))
        store.abandonGalleryVersion(again, diskWritten: true)
        #expect(!FileManager.default.fileExists(atPath: again.path))

        // Unless another record names the same file (a store written when two IDs could share a folder).
        let shared = try store.reserveGalleryVersion(request(galleryImage + "/versions/2.0.2"))
        #expect(FileManager.default.createFile(atPath: shared.path, contents: Data("shared".utf8)))
        var stored = disk()
        stored.path = shared.path
        _ = try store.addManagedImage(id: subscription + "/images/other", location: "westeurope", tags: [:], disk: stored, runID: "r0", source: "s")
        store.abandonGalleryVersion(shared, diskWritten: true)
        #expect(FileManager.default.fileExists(atPath: shared.path))
    }

    @Test func removingAnImageKeepsADiskAnotherRecordNames() throws {
        let temp = TemporaryState()
        let store = try StateStore.open(temp.state)
        let path = temp.path + "/shared.vhd"
        try FileManager.default.createDirectory(atPath: temp.path, withIntermediateDirectories: true)
        #expect(FileManager.default.createFile(atPath: path, contents: Data("disk".utf8)))
        var stored = disk()
        stored.path = path
        _ = try store.addManagedImage(id: Self.base("rg(1)") + "/images/golden", location: "westeurope", tags: [:], disk: stored, runID: "r1", source: "s")
        _ = try store.addManagedImage(id: Self.base("rg_1_") + "/images/golden", location: "westeurope", tags: [:], disk: stored, runID: "r2", source: "s")
        _ = try store.removeImage(id: Self.base("rg(1)") + "/images/golden")
        #expect(FileManager.default.fileExists(atPath: path), "the other image still uses it")
        _ = try store.removeImage(id: Self.base("rg_1_") + "/images/golden")
        #expect(!FileManager.default.fileExists(atPath: path), "the last one takes it")
    }
}
