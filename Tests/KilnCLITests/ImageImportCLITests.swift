import Foundation
import KilnTestSupport
import Testing

/// `kiln image import` of the formats users bring (no VM, no inspection): the format is decided once, shown,
/// recorded, and the file is never written.
@Suite("kiln image import: formats")
struct ImageImportCLITests {
    static func tool(_ name: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
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

    @Test func everyFormatIsDecidedOnceAndShown() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-import-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        // A small disk with an MBR and one partition, in each format.
        let raw = folder + "/disk.raw"
        #expect(FileManager.default.createFile(atPath: raw, contents: Data(count: 8 << 20)))
        let partitioned = try Self.tool("sh", ["-c", "echo 'start=2048, type=83' | /usr/sbin/sfdisk -q '\(raw)'"])
        #expect(partitioned.status == 0, "\(partitioned.output)")
        let variants: [(file: String, convert: [String], shown: String)] = [
            ("disk.raw", [], "raw"),
            ("disk.qcow2", ["-O", "qcow2"], "qcow2"),
            ("fixed.vhd", ["-O", "vpc", "-o", "subformat=fixed,force_size"], "vpc (VHD)"),
            ("dynamic.vhd", ["-O", "vpc", "-o", "subformat=dynamic"], "vpc (VHD)"),
        ]
        for variant in variants where !variant.convert.isEmpty {
            let converted = try Self.tool("qemu-img", ["convert", "-f", "raw"] + variant.convert + [raw, folder + "/" + variant.file])
            #expect(converted.status == 0, "\(converted.output)")
        }
        let environment = ["KILN_STATE_DIR": folder + "/state",
                           "KILN_CATALOG": URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                               .deletingLastPathComponent().appendingPathComponent("images/catalog.json").path]
        for (index, variant) in variants.enumerated() {
            let path = folder + "/" + variant.file
            let before = try FileManager.default.attributesOfItem(atPath: path)[.modificationDate] as? Date
            let imported = try KilnExecutable.run(["image", "import", path, "--urn", "Contoso:lab:disk:1.0.\(index)", "--no-inspect"], environment: environment)
            #expect(imported.status == 0, "\(imported.stderr)")
            #expect(imported.stdout.contains("imported Contoso:lab:disk:1.0.\(index): \(variant.shown), bios, \(path)"), "\(imported.stdout)")
            #expect(try FileManager.default.attributesOfItem(atPath: path)[.modificationDate] as? Date == before, "never written")
        }
        let listed = try KilnExecutable.run(["image", "list", "--json"], environment: environment)
        let listing = try JSONSerialization.jsonObject(with: Data(listed.stdout.utf8)) as? [String: Any]
        let records = listing?["sourceImages"] as? [[String: Any]] ?? []
        let formats = Dictionary(records.compactMap { record -> (String, String)? in
            guard let path = record["path"] as? String, path.hasPrefix(folder) else { return nil }
            return ((path as NSString).lastPathComponent, record["format"] as? String ?? "?")
        }, uniquingKeysWith: { $1 })
        #expect(formats == ["disk.raw": "raw", "disk.qcow2": "qcow2", "fixed.vhd": "vpc", "dynamic.vhd": "vpc"], "\(listed.stdout)")
    }
}
