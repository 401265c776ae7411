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
