import ArgumentParser
import Foundation
import KilnMachine
import KilnSupport

struct ImageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image",
        abstract: "Source images: the reference catalog and your own imported disks.",
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
        do { catalog = try ImageCatalog.locate(state: state) } catch { throw fail(error) }
        let records = catalog.records()
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(records), as: UTF8.self))
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
            if inspect {
                let info = try await DiskImageProbe.inspect(file.hasPrefix("/") ? file : FileManager.default.currentDirectoryPath + "/" + file)
                let decision = await AcceleratorProbe.decide(accel, cacheDirectory: state.path)
                printError("kiln: inspecting \(file) with libguestfs (one appliance launch)")
                let inspection = try await OfflineProvisioner.inspectAndProvision(disk: file, format: info.format, accelerator: decision.accelerator,
                                                                                  credentials: nil, forceOffline: false)
                osType = inspection.osType
                hasCloudInit = inspection.hasCloudInit
                printError("kiln: \(inspection.productName) (\(inspection.osType)), cloud-init \(inspection.hasCloudInit ? "present" : "absent")")
            }
            let record = try await catalog.importImage(file, urn: urn, osType: osType, hasCloudInit: hasCloudInit)
            print("imported \(record.urn): \(record.format), \(record.firmware.rawValue), \(record.path)")
        } catch {
            throw fail(error)
        }
    }
}

struct ImageRemoveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "remove", abstract: "Forget an imported image (the file stays).")

    @Argument(help: "Publisher:Offer:Sku:Version")
    var urn: String

    @Option(help: "State directory.")
    var stateDir: String?

    func run() async throws {
        do {
            try ImageCatalog.locate(state: StateDirectory(explicit: stateDir)).removeImported(urn: urn)
            print("removed \(urn)")
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
