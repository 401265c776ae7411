import ArgumentParser
import Foundation
import KilnMachine
import KilnStore
import KilnSupport

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
        do { try machine.requireOneHost("kiln image import") } catch { throw fail(error) }
        let state = machine.state
        let file = self.file, urn = self.urn, inspect = !noInspect, accel = machine.accel
        var leaseLayer: LeaseLayer?
        do {
            let catalog = try ImageCatalog.locate(state: state)
            try catalog.requireNewURN(urn)
            var osType: String?
            var hasCloudInit: Bool?
            var provisioning: LinuxProvisioning?
            if inspect {
                let path = file.hasPrefix("/") ? file : FileManager.default.currentDirectoryPath + "/" + file
                let info = try await DiskImageProbe.inspect(path)
                let decision = await AcceleratorProbe.decide(accel, cacheDirectory: state.path)
                printError("kiln: inspecting \(file) with libguestfs (one appliance launch)")
                // Through a layer, so that an image the Azure Linux agent provisions gets its leases written once,
                // here, rather than in a launch before every build's boot.
                let (inspection, layer) = try await LeaseLayer.inspect(source: path, format: info.format, path: try catalog.leaseLayerPath(for: urn),
                                                                      accelerator: decision.accelerator)
                leaseLayer = layer
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
                if let layer {
                    printError("kiln: the agent's DHCP leases (\(layer.leases.joined(separator: ", "))) written once into \(layer.path); builds boot on it without a libguestfs launch, and remove the leases in their final cleanup")
                }
            }
            let record = try await catalog.importImage(file, urn: urn, osType: osType, hasCloudInit: hasCloudInit, provisioning: provisioning,
                                                       leaseLayer: leaseLayer)
            let format = record.format == "vpc" ? "vpc (VHD)" : record.format
            print("imported \(record.urn): \(format), \(record.firmware.rawValue), \(record.path)"
                  + (record.provisioning.map { ", provisioning \($0.rawValue)" } ?? ""))
        } catch {
            if let leaseLayer { try? FileManager.default.removeItem(atPath: leaseLayer.path) }
            throw fail(error)
        }
    }
}
