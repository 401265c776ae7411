import Foundation
import KilnStore
import KilnSupport
import KilnTemplate
import Testing

/// A fresh state directory per test, removed afterwards.
final class TemporaryState {
    let path: String
    let state: StateDirectory

    init() {
        path = NSTemporaryDirectory() + "kiln-store-test-\(UUID().uuidString)"
        state = StateDirectory(explicit: path)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

let subscription = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/RG/providers/Microsoft.Compute"
let galleryImage = subscription + "/galleries/gal/images/deb"

func disk(_ firmware: String = "bios") -> StoredDisk {
    StoredDisk(path: "/nonexistent/disk.vhd", format: "vpc", firmware: firmware, osType: "Linux", hasCloudInit: true,
               virtualSizeBytes: 4 << 30)
}

func request(_ imageId: String = galleryImage, versioning: VersioningScheme? = nil, sourceVersion: String? = nil,
             excludeFromLatest: Bool = false, firmware: String = "bios") -> GalleryVersionRequest {
    GalleryVersionRequest(galleryImageId: imageId, versioning: versioning, sourceVersion: sourceVersion,
                          excludeFromLatest: excludeFromLatest, storageAccountType: "Standard_LRS",
                          targetRegions: [TargetRegionRecord(name: "westeurope", replicaCount: 1, storageAccountType: "Standard_LRS")],
                          tags: ["k": "v"], disk: disk(firmware), runID: "run", source: "test")
}

/// A process identity that is not running (no such PID on any Linux host: above pid_max).
let deadOwner = ProcessIdentity(bootID: "gone", pid: 99_999_999, startTicks: 1)

@discardableResult
func publish(_ store: StateStore, _ request: GalleryVersionRequest) throws -> String {
    let reservation = try store.reserveGalleryVersion(request)
    try store.completeGalleryVersion(reservation)
    return reservation.record.version.description
}

@Suite("Local gallery")
struct GalleryTests {
    @Test("versioning: Latest (with and without major), Source, explicit; clashes and generation mismatches are errors")
    func versioning() throws {
        let temp = TemporaryState()
        let store = try StateStore.open(temp.state)

        let first = try store.reserveGalleryVersion(request())
        #expect(first.record.version.description == "1.0.0")
        #expect(first.notices.count == 2, "the gallery and the image definition are created on first use, with a notice")
        #expect(first.record.id.hasSuffix("/galleries/gal/images/deb/versions/1.0.0"))
        try store.completeGalleryVersion(first)

        let second = try store.reserveGalleryVersion(request())
        #expect(second.record.version.description == "1.0.1")
        #expect(second.notices.isEmpty)
        try store.completeGalleryVersion(second)

        #expect(try publish(store, request(versioning: .latest(major: 2))) == "2.0.0")
        #expect(try publish(store, request(versioning: .latest(major: 1))) == "1.0.2")
        #expect(try publish(store, request(versioning: .latest(major: -1))) == "2.0.1")
        #expect(try publish(store, request(galleryImage + "/versions/1.5.0")) == "1.5.0")
        #expect(try publish(store, request(versioning: .source, sourceVersion: "12.20261126.7")) == "12.20261126.7")
        #expect(try publish(store, request(versioning: .latest(major: nil))) == "12.20261126.8")

        let clash = #expect(throws: KilnError.self) { try store.reserveGalleryVersion(request(galleryImage + "/versions/1.5.0")) }
        #expect(clash?.message.contains("found an existing one") == true)
        let noVersion = #expect(throws: KilnError.self) { try store.reserveGalleryVersion(request(versioning: .source, sourceVersion: "latest")) }
        #expect(noVersion?.message.contains("versioning scheme Source") == true)
        let generation = #expect(throws: KilnError.self) { try store.reserveGalleryVersion(request(firmware: "uefi")) }
        #expect(generation?.message.contains("HyperV generation V2") == true)
        let badID = #expect(throws: KilnError.self) { try store.reserveGalleryVersion(request("/subscriptions/x/rg")) }
        #expect(badID?.message.contains("expected a resource ID") == true)
    }

    @Test("latest skips excluded and unfinished versions; a dead build's reservation is reclaimed")
    func latestResolution() throws {
        let temp = TemporaryState()
        let store = try StateStore.open(temp.state)
        try publish(store, request())                                  // 1.0.0
        try publish(store, request(excludeFromLatest: true))           // 1.0.1
        let inProgress = try store.reserveGalleryVersion(request())    // 1.0.2, Creating, owned by this live process
        #expect(inProgress.record.version.description == "1.0.2")

        #expect(try store.resolveGalleryVersion(galleryImage + "/versions/latest").version.description == "1.0.0")
        #expect(try store.resolveGalleryVersion(galleryImage.uppercased() + "/versions/1.0.1").version.description == "1.0.1")
        let unfinished = #expect(throws: KilnError.self) { try store.resolveGalleryVersion(galleryImage + "/versions/1.0.2") }
        #expect(unfinished?.message.contains("it has 1.0.0, 1.0.1 (excluded from latest)") == true)
        let missing = #expect(throws: KilnError.self) { try store.resolveGalleryVersion(subscription + "/galleries/gal/images/other/versions/latest") }
        #expect(missing?.message.contains("it has no versions") == true)

        // A reservation whose process died is given back on the next allocation.
        store.abandonGalleryVersion(inProgress, diskWritten: false)
        let orphan = try store.reserveGalleryVersion(request(), owner: deadOwner)
        #expect(orphan.record.version.description == "1.0.2")
        #expect(try publish(store, request()) == "1.0.2")
        #expect(try store.galleryVersions().map(\.version.description) == ["1.0.0", "1.0.1", "1.0.2"])
    }

    @Test("two builds publishing into one gallery image at once get distinct, increasing versions")
    func concurrentAllocation() async throws {
        let temp = TemporaryState()
        // Two independent connections to the database, as two Kiln processes would have.
        let stores = [try StateStore.open(temp.state), try StateStore.open(temp.state)]
        let perStore = 10
        let sequences = try await withThrowingTaskGroup(of: [GalleryVersion].self) { group in
            for store in stores {
                group.addTask {
                    try await Task.detached {
                        var got: [GalleryVersion] = []
                        for _ in 0..<perStore {
                            let reservation = try store.reserveGalleryVersion(request())
                            try store.completeGalleryVersion(reservation)
                            got.append(reservation.record.version)
                        }
                        return got
                    }.value
                }
            }
            var all: [[GalleryVersion]] = []
            for try await sequence in group { all.append(sequence) }
            return all
        }
        let all = sequences.flatMap { $0 }
        #expect(Set(all).count == stores.count * perStore, "every allocation is distinct")
        #expect(all.sorted().map(\.description) == (0..<(stores.count * perStore)).map { "1.0.\($0)" })
        for sequence in sequences {
            #expect(sequence == sequence.sorted(), "each build's versions increase")
        }
    }
}

@Suite("Managed images and state")
struct StateTests {
    @Test("managed images: one per ID (any case), removal deletes the disk")
    func managedImages() throws {
        let temp = TemporaryState()
        let store = try StateStore.open(temp.state)
        let id = subscription + "/images/golden"
        let path = try store.managedImagePath(for: id)
        #expect(path.hasPrefix(temp.path + "/store/images/"))
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: path, contents: Data("disk".utf8))
        var stored = disk()
        stored.path = path
        _ = try store.addManagedImage(id: id, location: "westeurope", tags: ["a": "b"], disk: stored, runID: "r1", source: "s")
        let again = #expect(throws: KilnError.self) {
            try store.addManagedImage(id: id.uppercased(), location: "westeurope", tags: [:], disk: stored, runID: "r2", source: "s")
        }
        #expect(again?.message.contains("found one from run r1") == true)
        #expect(try store.managedImage(id: id.lowercased())?.tags == ["a": "b"])
        guard case .managedImage(let removed) = try store.removeImage(id: id) else {
            Issue.record("expected the managed image to be removed")
            return
        }
        #expect(removed.runID == "r1")
        #expect(!FileManager.default.fileExists(atPath: path))
        #expect(throws: KilnError.self) { try store.removeImage(id: id) }
    }

    @Test("a corrupt state database is a clear error and is left untouched", arguments: ["garbage", "damaged page"])
    func corruptDatabase(kind: String) throws {
        let temp = TemporaryState()
        let file = temp.path + "/" + StateStore.fileName
        if kind == "garbage" {
            try FileManager.default.createDirectory(atPath: temp.path, withIntermediateDirectories: true)
            FileManager.default.createFile(atPath: file, contents: Data((0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }))
        } else {
            // A real database with records, then one of its b-tree pages overwritten.
            do {
                let store = try StateStore.open(temp.state)
                for index in 0..<50 {
                    try store.createTemplate(TemplateRow(name: "t\(index)", templatePath: "/x", storedPath: "/y", resourceName: "t",
                                                         parameters: [:], location: String(repeating: "l", count: 500)))
                }
            }
            let handle = try #require(FileHandle(forUpdatingAtPath: file))
            try handle.seek(toOffset: 4096 * 2)
            handle.write(Data(repeating: 0xA5, count: 4096))
            try handle.close()
        }
        let before = try Data(contentsOf: URL(fileURLWithPath: file))
        let error = #expect(throws: KilnError.self) { _ = try StateStore.open(temp.state).templates() }
        #expect(error?.code == .invalidState)
        #expect(error?.message.contains(file) == true)
        #expect(error?.message.contains("not a healthy SQLite database") == true)
        #expect(try Data(contentsOf: URL(fileURLWithPath: file)) == before, "the file is left as it was")
    }

    @Test("runs: a live owner makes a run active (delete refused); a dead owner's Running run reads as Failed")
    func runs() throws {
        let temp = TemporaryState()
        let store = try StateStore.open(temp.state)
        try store.createTemplate(TemplateRow(name: "Web", templatePath: "/t.json", storedPath: "/s.json", resourceName: "web",
                                             parameters: ["a": "1"], location: "westus"))
        #expect(throws: KilnError.self) {
            try store.createTemplate(TemplateRow(name: "web", templatePath: "/t.json", storedPath: "/s.json", resourceName: "web",
                                                 parameters: [:], location: "westus"))
        }
        #expect(try store.template(named: "WEB")?.parameterValues == ["a": "1"])

        var record = RunRecord(runID: "live", templateName: "Web", templatePath: "/s.json")
        record.runOutputs = [RunOutput(runOutputName: "vhd", type: "VHD", artifactUri: "file:///x.vhd", provisioningState: "Succeeded")]
        try store.saveRun(record, runDirectory: temp.path + "/runs/live", fromCreatedTemplate: true)
        #expect(try store.runs(template: "web").first?.isActive == true)
        let refused = #expect(throws: KilnError.self) { _ = try store.deleteTemplate(named: "web") }
        #expect(refused?.message.contains("run in progress") == true)

        var orphan = RunRecord(runID: "orphan", templateName: "other", templatePath: "/o.json")
        orphan.runSubState = .customizing
        try store.saveRun(orphan, runDirectory: temp.path + "/runs/orphan", fromCreatedTemplate: false, owner: deadOwner)
        let read = try #require(try store.run(id: "orphan"))
        #expect(!read.isActive)
        #expect(read.record.runState == .failed)
        #expect(read.record.message.contains("ended before the run finished"))

        record.runState = .succeeded
        record.endTime = Date()
        try store.saveRun(record, runDirectory: temp.path + "/runs/live", fromCreatedTemplate: true)
        // A one-shot `kiln build` of a template that happens to share the name is not the created template's run.
        var oneShot = RunRecord(runID: "oneshot", templateName: "web", templatePath: "/elsewhere.json")
        oneShot.runState = .succeeded
        try store.saveRun(oneShot, runDirectory: temp.path + "/runs/oneshot", fromCreatedTemplate: false)
        #expect(try store.runs(template: "web").map(\.record.runID) == ["live"])
        let deleted = try store.deleteTemplate(named: "WEB")
        #expect(deleted.map(\.record.runID) == ["live"])
        #expect(deleted.first?.record.runOutputs.first?.artifactUri == "file:///x.vhd")
        #expect(try store.template(named: "web") == nil)
        #expect(try store.runs(template: "web").isEmpty)
        #expect(try store.runs(template: "web", createdOnly: false).map(\.record.runID) == ["oneshot"])
    }
}
