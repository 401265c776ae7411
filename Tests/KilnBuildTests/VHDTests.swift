import Foundation
import KilnBuild
import KilnDistribution
import KilnSupport
import Testing

@Suite("Fixed VHD output")
struct VHDTests {
    @Test("a VHD from a disk whose size is not a whole MiB is rounded up, footer valid, sparse, readable by qemu-img")
    func writeAndParse() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-vhd-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let raw = directory + "/disk.raw"
        let virtualSize: UInt64 = 64 * 1024 * 1024 + 4096   // not a whole MiB
        try await Subprocess.check("qemu-img", ["create", "-q", "-f", "raw", raw, String(virtualSize)])
        // Some data at the start and the end; the rest stays a hole.
        let handle = try #require(FileHandle(forWritingAtPath: raw))
        handle.write(Data(repeating: 0xAB, count: 1 << 20))
        try handle.seek(toOffset: virtualSize - 4096)
        handle.write(Data(repeating: 0xCD, count: 4096))
        try handle.close()

        let vhd = directory + "/out.vhd"
        try await VHDWriter.write(disk: raw, format: "raw", virtualSizeBytes: virtualSize, to: vhd)
        let expectedSize: UInt64 = 65 * 1024 * 1024
        let fileSize = try #require((try FileManager.default.attributesOfItem(atPath: vhd)[.size] as? NSNumber)?.uint64Value)
        #expect(fileSize == expectedSize + 512)

        let footer = try VHDFooter.read(vhd)
        #expect(footer.cookie == "conectix")
        #expect(footer.diskType == 2)
        #expect(footer.formatVersion == 0x0001_0000)
        #expect(footer.dataOffset == UInt64.max)
        #expect(footer.currentSize == expectedSize)
        #expect(footer.originalSize == expectedSize)
        #expect(footer.checksum == footer.computedChecksum)
        #expect(footer.azureProblem(fileSize: fileSize) == nil)

        let info = try await Subprocess.check("qemu-img", ["info", "--output=json", "-f", "vpc", vhd])
        let json = try #require(try JSONSerialization.jsonObject(with: info.stdout) as? [String: Any])
        #expect((json["virtual-size"] as? NSNumber)?.uint64Value == expectedSize)

        // Sparse: the blocks on disk follow the data written (~1 MiB + 4 KiB), not the 65 MiB virtual size.
        var status = stat()
        #expect(stat(vhd, &status) == 0)
        #expect(UInt64(status.st_blocks) * 512 < 8 * 1024 * 1024)

        // The data survived: the first MiB and the last 4 KiB.
        let read = try #require(FileHandle(forReadingAtPath: vhd))
        #expect(try read.read(upToCount: 16) == Data(repeating: 0xAB, count: 16))
        try read.seek(toOffset: virtualSize - 4096)
        #expect(try read.read(upToCount: 16) == Data(repeating: 0xCD, count: 16))
        try read.close()
        // Nothing but the output is left.
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).sorted() == ["disk.raw", "out.vhd"])
    }

    @Test("a corrupted footer checksum and a dynamic disk are refused")
    func footerProblems() throws {
        var bytes = [UInt8](repeating: 0, count: 512)
        bytes.replaceSubrange(0..<8, with: Array("conectix".utf8))
        bytes.replaceSubrange(16..<24, with: [UInt8](repeating: 0xFF, count: 8))
        let size: UInt64 = 1 << 20
        for (index, shift) in stride(from: 56, through: 0, by: -8).enumerated() {
            bytes[40 + index] = UInt8((size >> UInt64(shift)) & 0xFF)
            bytes[48 + index] = UInt8((size >> UInt64(shift)) & 0xFF)
        }
        bytes[63] = 2
        func sealed(_ footer: [UInt8]) -> [UInt8] {
            var footer = footer
            footer.replaceSubrange(64..<68, with: [0, 0, 0, 0])
            let checksum = ~footer.reduce(UInt32(0)) { $0 &+ UInt32($1) }
            footer.replaceSubrange(64..<68, with: [UInt8(checksum >> 24), UInt8((checksum >> 16) & 0xFF), UInt8((checksum >> 8) & 0xFF), UInt8(checksum & 0xFF)])
            return footer
        }
        bytes = sealed(bytes)
        #expect(try VHDFooter(bytes: bytes).azureProblem(fileSize: size + 512) == nil)
        #expect(try VHDFooter(bytes: bytes).azureProblem(fileSize: size)?.contains("512-byte footer") == true)

        var corrupted = bytes
        corrupted[100] = 1
        #expect(try VHDFooter(bytes: corrupted).azureProblem(fileSize: size + 512)?.contains("checksum") == true)

        var dynamic = bytes
        dynamic[63] = 3
        dynamic = sealed(dynamic)
        #expect(try VHDFooter(bytes: dynamic).azureProblem(fileSize: size + 512)?.contains("disk type") == true)
        #expect(throws: KilnError.self) { try VHDFooter(bytes: [0, 1, 2]) }
    }
}
