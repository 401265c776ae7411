import ArgumentParser
import Foundation
import KilnMachine
import KilnStore
import KilnSupport

struct ImageListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the source images Kiln can boot.")

    @Option(help: "State directory (default: $KILN_STATE_DIR, else $XDG_DATA_HOME/kiln).")
    var stateDir: String?

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        let state = StateDirectory(explicit: stateDir)
        let catalog: ImageCatalog
        let store: StateStore
        do {
            catalog = try ImageCatalog.locate(state: state)
            store = try StateStore.open(state)
        } catch {
            throw fail(error)
        }
        let records = catalog.records()
        let managed: [ManagedImageRecord]
        let versions: [GalleryVersionRecord]
        do {
            managed = try store.managedImages()
            versions = try store.galleryVersions()
        } catch {
            throw fail(error)
        }
        if json {
            struct Listing: Encodable {
                var sourceImages: [ImageRecord]
                var managedImages: [Managed]
                var galleryVersions: [Version]
                struct Managed: Encodable { var id, location, path, hyperVGeneration, runID, source: String; var tags: [String: String] }
                struct Version: Encodable {
                    var id, galleryImageId, version, state, path, hyperVGeneration, storageAccountType, runID, source: String
                    var excludeFromLatest: Bool
                    var targetRegions: [TargetRegionRecord]
                    var tags: [String: String]
                }
            }
            let listing = Listing(
                sourceImages: records,
                managedImages: managed.map { .init(id: $0.id, location: $0.location, path: $0.disk.path, hyperVGeneration: $0.disk.hyperVGeneration,
                                                   runID: $0.runID, source: $0.source, tags: $0.tags) },
                galleryVersions: versions.map { .init(id: $0.id, galleryImageId: $0.galleryImageId, version: $0.version.description, state: $0.state,
                                                      path: $0.disk.path, hyperVGeneration: $0.disk.hyperVGeneration,
                                                      storageAccountType: $0.storageAccountType, runID: $0.runID, source: $0.source,
                                                      excludeFromLatest: $0.excludeFromLatest, targetRegions: $0.targetRegions, tags: $0.tags) })
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(listing), as: UTF8.self))
            return
        }
        var rows = [["URN", "FIRMWARE", "FORMAT", "ORIGIN", "PATH"]]
        for record in records {
            rows.append([record.urn, record.firmware.rawValue, record.format, record.origin, record.path])
        }
        let built = Set(records.map { "\($0.publisher):\($0.offer):\($0.sku)".lowercased() })
        for entry in catalog.entries where !built.contains("\(entry.publisher):\(entry.offer):\(entry.sku)".lowercased()) {
            rows.append(["\(entry.publisher):\(entry.offer):\(entry.sku):latest", entry.firmware.rawValue, "qcow2",
                         "catalog recipe \(entry.recipe) (not built yet; built on first use)", "-"])
        }
        printTable(rows)
        if !managed.isEmpty {
            print("")
            var table = [["MANAGED IMAGE", "GEN", "LOCATION", "RUN", "PATH"]]
            for image in managed { table.append([image.id, image.disk.hyperVGeneration, image.location, image.runID, image.disk.path]) }
            printTable(table)
        }
        if !versions.isEmpty {
            print("")
            var table = [["GALLERY IMAGE VERSION", "STATE", "LATEST", "GEN", "REGIONS", "RUN"]]
            for version in versions {
                table.append([version.id, version.state, version.excludeFromLatest ? "excluded" : "yes", version.disk.hyperVGeneration,
                              version.targetRegions.map { "\($0.name)x\($0.replicaCount)" }.joined(separator: ","), version.runID])
            }
            printTable(table)
        }
        if catalog.catalogPath == nil {
            printError("kiln: no images/catalog.json found; set KILN_CATALOG to list the reference images")
        }
    }
}
