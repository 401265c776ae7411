import Foundation
import KilnTestSupport
import Testing

/// `kiln image import` of the formats users bring (no VM, no inspection): the format is decided once, shown,
/// recorded, and the file is never written.
@Suite("kiln image import: formats")
struct ImageImportCLITests {
    static func tool(_ name: String, _ arguments: [String]) async throws -> (status: Int32, output: String) {
        try await OwnThread.run {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/" + name)
            process.arguments = arguments
            let pipe = Pipe()
            process.standardOutput = pipe
            process.standardError = pipe
            try process.run()
            let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            return (process.terminationStatus, output)
        }
    }

    @Test func everyFormatIsDecidedOnceAndShown() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-import-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        // A small disk with an MBR and one partition, in each format.
        let raw = folder + "/disk.raw"
        #expect(FileManager.default.createFile(atPath: raw, contents: Data(count: 8 << 20)))
        let partitioned = try await Self.tool("sh", ["-c", "echo 'start=2048, type=83' | /usr/sbin/sfdisk -q '\(raw)'"])
        #expect(partitioned.status == 0, "\(partitioned.output)")
        let variants: [(file: String, convert: [String], shown: String)] = [
            ("disk.raw", [], "raw"),
            ("disk.qcow2", ["-O", "qcow2"], "qcow2"),
            ("fixed.vhd", ["-O", "vpc", "-o", "subformat=fixed,force_size"], "vpc (VHD)"),
            ("dynamic.vhd", ["-O", "vpc", "-o", "subformat=dynamic"], "vpc (VHD)"),
        ]
        for variant in variants where !variant.convert.isEmpty {
            let converted = try await Self.tool("qemu-img", ["convert", "-f", "raw"] + variant.convert + [raw, folder + "/" + variant.file])
            #expect(converted.status == 0, "\(converted.output)")
        }
        let environment = ["KILN_STATE_DIR": folder + "/state",
                           "KILN_CATALOG": URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                               .deletingLastPathComponent().appendingPathComponent("images/catalog.json").path]
        for (index, variant) in variants.enumerated() {
            let path = folder + "/" + variant.file
            let before = try FileManager.default.attributesOfItem(atPath: path)[.modificationDate] as? Date
            let imported = try await KilnExecutable.run(["image", "import", path, "--urn", "Contoso:lab:disk:1.0.\(index)", "--no-inspect"], environment: environment)
            #expect(imported.status == 0, "\(imported.stderr)")
            #expect(imported.stdout.contains("imported Contoso:lab:disk:1.0.\(index): \(variant.shown), bios, \(path)"), "\(imported.stdout)")
            #expect(try FileManager.default.attributesOfItem(atPath: path)[.modificationDate] as? Date == before, "never written")
        }
        let listed = try await KilnExecutable.run(["image", "list", "--json"], environment: environment)
        let listing = try JSONSerialization.jsonObject(with: Data(listed.stdout.utf8)) as? [String: Any]
        let records = listing?["sourceImages"] as? [[String: Any]] ?? []
        let formats = Dictionary(records.compactMap { record -> (String, String)? in
            guard let path = record["path"] as? String, path.hasPrefix(folder) else { return nil }
            return ((path as NSString).lastPathComponent, record["format"] as? String ?? "?")
        }, uniquingKeysWith: { $1 })
        #expect(formats == ["disk.raw": "raw", "disk.qcow2": "qcow2", "fixed.vhd": "vpc", "dynamic.vhd": "vpc"], "\(listed.stdout)")
    }

    /// An image that reads another host file (a backing file, a qcow2 external data file, a VMDK extent) is refused by
    /// `kiln image import` and `kiln vm exec FILE`, and an imported image changed into one afterwards is refused
    /// before a VM boots it; a self-contained one is accepted.
    @Test func imagesReadingOtherFilesAreRefused() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-import-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let raw = folder + "/disk.raw"
        #expect(FileManager.default.createFile(atPath: raw, contents: Data(count: 8 << 20)))
        let partitioned = try await Self.tool("sh", ["-c", "echo 'start=2048, type=83' | /usr/sbin/sfdisk -q '\(raw)'"])
        #expect(partitioned.status == 0, "\(partitioned.output)")
        let plain = folder + "/plain.qcow2", backed = folder + "/backed.qcow2", external = folder + "/external.qcow2"
        let data = folder + "/data.raw"
        for arguments in [["convert", "-f", "raw", "-O", "qcow2", raw, plain],
                          ["create", "-q", "-f", "qcow2", "-F", "raw", "-b", raw, backed],
                          ["create", "-q", "-f", "qcow2", "-o", "data_file=\(data)", external, "8M"]] {
            let made = try await Self.tool("qemu-img", arguments)
            #expect(made.status == 0, "\(made.output)")
        }
        let environment = ["KILN_STATE_DIR": folder + "/state",
                           "KILN_CATALOG": URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                               .deletingLastPathComponent().appendingPathComponent("images/catalog.json").path]
        let refusals: [(file: String, found: String)] = [(backed, "a backing file (\(raw))"), (external, "an external data file (\(data))")]
        for refusal in refusals {
            let imported = try await KilnExecutable.run(["image", "import", refusal.file, "--urn", "Contoso:lab:bad:1.0.0", "--no-inspect"], environment: environment)
            #expect(imported.status != 0)
            #expect(imported.stderr.contains("expected a self-contained disk image, found a qcow2 image with \(refusal.found): \(refusal.file)"), "\(imported.stderr)")
            let exec = try await KilnExecutable.run(["vm", "exec", refusal.file, "--", "true"], environment: environment)
            #expect(exec.status != 0)
            #expect(exec.stderr.contains("found a qcow2 image with \(refusal.found)"), "\(exec.stderr)")
        }
        // A VMDK descriptor whose extent is another file (it could name any host file or device).
        let flat = folder + "/flat.vmdk"
        let madeFlat = try await Self.tool("qemu-img", ["create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", flat, "8M"])
        #expect(madeFlat.status == 0, "\(madeFlat.output)")
        let flatImport = try await KilnExecutable.run(["image", "import", flat, "--urn", "Contoso:lab:bad:1.0.0", "--no-inspect"], environment: environment)
        #expect(flatImport.status != 0)
        #expect(flatImport.stderr.contains("found a vmdk image with an extent in another file (\(folder)/flat-flat.vmdk): \(flat)"), "\(flatImport.stderr)")

        let listed = try await KilnExecutable.run(["image", "list", "--json"], environment: environment)
        #expect(!listed.stdout.contains("Contoso"), "nothing was recorded: \(listed.stdout)")

        let accepted = try await KilnExecutable.run(["image", "import", plain, "--urn", "Contoso:lab:good:1.0.0", "--no-inspect"], environment: environment)
        #expect(accepted.status == 0, "\(accepted.stderr)")
        // The owner swaps the file for one with a backing file: the next use refuses it before booting.
        try FileManager.default.removeItem(atPath: plain)
        try FileManager.default.copyItem(atPath: backed, toPath: plain)
        let exec = try await KilnExecutable.run(["vm", "exec", "Contoso:lab:good:1.0.0", "--", "true"], environment: environment)
        #expect(exec.status != 0)
        #expect(exec.stderr.contains("found a qcow2 image with a backing file (\(raw)): \(plain)"), "\(exec.stderr)")
    }
}
