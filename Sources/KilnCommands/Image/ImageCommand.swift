import ArgumentParser
import Foundation
import KilnMachine
import KilnStore
import KilnSupport

struct ImageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image",
        abstract: "Images: the reference catalog, your imported disks, and the local managed images and gallery versions builds wrote.",
        subcommands: [ImageListCommand.self, ImageImportCommand.self, ImageRemoveCommand.self]
    )
}

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

struct ImageImportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Register your own qcow2, raw or VHD disk under a PlatformImage URN.",
        discussion: """
        The file is not copied and never written: builds boot overlays on it. Kiln inspects it once with libguestfs \
        (operating system, cloud-init) so that builds need no inspection of their own.
        """
    )

    @Argument(help: "The disk image file.")
    var file: String

    @Option(help: "Publisher:Offer:Sku:Version, as a template's PlatformImage source names it.")
    var urn: String

    @Flag(help: "Skip the libguestfs inspection (each build then inspects the image itself).")
    var noInspect = false

    @OptionGroup var machine: MachineFlags

    func run() async throws {
        let state = machine.state
        let file = self.file, urn = self.urn, inspect = !noInspect, accel = machine.accel
        do {
            let catalog = try ImageCatalog.locate(state: state)
            var osType: String?
            var hasCloudInit: Bool?
            var provisioning: LinuxProvisioning?
            if inspect {
                let info = try await DiskImageProbe.inspect(file.hasPrefix("/") ? file : FileManager.default.currentDirectoryPath + "/" + file)
                let decision = await AcceleratorProbe.decide(accel, cacheDirectory: state.path)
                printError("kiln: inspecting \(file) with libguestfs (one appliance launch)")
                let inspection = try await OfflineProvisioner.inspectAndProvision(disk: file, format: info.format, accelerator: decision.accelerator,
                                                                                  credentials: nil, forceOffline: false)
                osType = inspection.osType
                hasCloudInit = inspection.hasCloudInit
                provisioning = inspection.provisioning
                if let configuration = inspection.configuration, let provisioning {
                    printError("kiln: \(inspection.productName) (\(inspection.osType)): \(configuration.description)")
                    printError("kiln: the build user will be given by \(provisioning.summary)")
                    if let notice = configuration.notice { printError("kiln: note: \(notice)") }
                } else {
                    printError("kiln: \(inspection.productName) (\(inspection.osType)), cloud-init \(inspection.hasCloudInit ? "present" : "absent")")
                }
            }
            let record = try await catalog.importImage(file, urn: urn, osType: osType, hasCloudInit: hasCloudInit, provisioning: provisioning)
            let format = record.format == "vpc" ? "vpc (VHD)" : record.format
            print("imported \(record.urn): \(format), \(record.firmware.rawValue), \(record.path)"
                  + (record.provisioning.map { ", provisioning \($0.rawValue)" } ?? ""))
        } catch {
            throw fail(error)
        }
    }
}

struct ImageRemoveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove",
        abstract: "Delete a managed image or gallery version (by resource ID, with its disk), or forget an imported image (by URN; its file stays)."
    )

    @Argument(help: "A resource ID (/subscriptions/…/images/NAME or …/images/DEF/versions/X.Y.Z) or Publisher:Offer:Sku:Version.")
    var image: String

    @OptionGroup var stateFlags: StateFlags

    func run() async throws {
        let state = stateFlags.state
        do {
            if image.hasPrefix("/") {
                switch try StateStore.open(state).removeImage(id: image) {
                case .managedImage(let record): print("removed managed image \(record.id) and its disk \(record.disk.path)")
                case .galleryVersion(let record): print("removed gallery image version \(record.id) and its disk \(record.disk.path)")
                }
            } else {
                try ImageCatalog.locate(state: state).removeImported(urn: image)
                print("removed \(image)")
            }
        } catch {
            throw fail(error)
        }
    }
}

func printTable(_ rows: [[String]]) {
    guard let columns = rows.map(\.count).max() else { return }
    var widths = [Int](repeating: 0, count: columns)
    for row in rows { for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) } }
    for row in rows {
        let cells = row.enumerated().map { index, cell in
            index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
        }
        print(cells.joined(separator: "  "))
    }
}
