import Foundation
@testable import KilnBuild
@testable import KilnDistribution
import KilnMachine
import KilnStore
import KilnSupport
@testable import KilnTemplate
import Testing

/// A gallery version whose disk cannot be placed (a file is already at its path) is given back without taking that
/// file with it: a failed build removes only what it wrote.
@Suite("Distribution: a failed version write removes only its own files")
struct DistributionTests {
    @Test func aFileAlreadyAtTheVersionsPathSurvivesTheFailedBuild() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-distribute-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: root + "/run", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = try StateStore.open(StateDirectory(explicit: root + "/state"))
        let disk = root + "/disk.qcow2"
        let made = try Subprocess.runBlocking("/usr/bin/qemu-img", ["create", "-q", "-f", "qcow2", disk, "1M"], timeout: .seconds(60)).get()
        #expect(made.succeeded, "\(made.stderrText)")

        let imageID = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg/providers/Microsoft.Compute/galleries/gal/images/deb"
        // Learn where version 1.0.0 goes, give the reservation back, and put someone else's file there.
        let probe = try store.reserveGalleryVersion(GalleryVersionRequest(
            galleryImageId: imageID + "/versions/1.0.0", versioning: nil, sourceVersion: nil, excludeFromLatest: false, storageAccountType: "Standard_LRS",
            targetRegions: [], tags: [:], disk: StoredDisk(path: disk, format: "qcow2", firmware: "bios", osType: "Linux", hasCloudInit: true, virtualSizeBytes: 1 << 20),
            runID: "probe", source: "test"))
        store.abandonGalleryVersion(probe, diskWritten: false)
        try FileManager.default.createDirectory(atPath: (probe.path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        #expect(FileManager.default.createFile(atPath: probe.path, contents: Data("someone else's disk".utf8)))

        let source = SourceImage(path: disk, format: "qcow2", virtualSizeBytes: 1 << 20, firmware: .bios, osType: "Linux", hasCloudInit: true, urn: "A:B:C:1.0.0")
        let distribution = Distribution(store: store, runID: "run", runDirectory: root + "/run", templateLocation: "westeurope", source: source,
                                        guestOS: .linux, log: CustomizationLog(path: root + "/run/customization.log"), force: false, protected: [],
                                        events: { _ in })
        let target = Distributor(runOutputName: "gallery", artifactTags: [],
                                 target: .sharedImage(SharedImageDistributor(galleryImageId: imageID + "/versions/1.0.0", replicationRegions: [],
                                                                             targetRegions: [], excludeFromLatest: false, storageAccountType: nil,
                                                                             versioning: nil)))
        let outputs = await distribution.run([target], disk: disk, virtualSizeBytes: 1 << 20)
        #expect(outputs.first?.provisioningState == "Failed")
        #expect(outputs.first?.error?.contains("a file is already there") == true, "\(outputs)")
        #expect(try String(contentsOfFile: probe.path, encoding: .utf8) == "someone else's disk")
        #expect(try store.galleryVersions().isEmpty, "the reservation is given back")
    }
}
