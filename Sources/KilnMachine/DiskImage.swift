import Foundation
import KilnSupport

public enum Firmware: String, Sendable, Codable {
    case bios
    case uefi
}

/// What Kiln learns about a disk file without booting it: format, virtual size, and the firmware its partition
/// table implies (GPT with an EFI System Partition → UEFI, otherwise BIOS).
public struct DiskImageInfo: Sendable, Equatable {
    /// qemu's format name: qcow2, raw, vpc (VHD), vmdk, vhdx.
    public var format: String
    public var virtualSizeBytes: UInt64
    public var firmware: Firmware
}

public enum DiskImageProbe {
    /// Formats Kiln boots. A fixed VHD is qemu's "vpc" with a footer only; qemu-img would call it raw.
    static let bootableFormats: Set<String> = ["qcow2", "raw", "vpc", "vmdk", "vhdx"]

    public static func inspect(_ path: String) async throws(KilnError) -> DiskImageInfo {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw KilnError(.notFound, "expected a disk image file, found no file at \(path)")
        }
        guard !isDirectory.boolValue else {
            throw KilnError(.invalidArgument, "expected a disk image file, found a directory: \(path)")
        }
        let vhd = try hasVHDFooter(path)
        var arguments = ["info", "--output=json", "-U"]
        if vhd { arguments += ["-f", "vpc"] }
        let result = try await Subprocess.run("qemu-img", arguments + [path], timeout: .seconds(60))
        guard result.succeeded,
              let json = try? JSONSerialization.jsonObject(with: result.stdout) as? [String: Any],
              let format = json["format"] as? String,
              let size = (json["virtual-size"] as? NSNumber)?.uint64Value else {
            throw KilnError(.invalidArgument, "expected a disk image (qcow2, raw, VHD), found a file qemu-img cannot read: \(path): \(result.stderrText.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        guard bootableFormats.contains(format) else {
            throw KilnError(.invalidArgument, "expected a disk image (qcow2, raw, VHD), found qemu format \(format): \(path)")
        }
        let sector0 = try await readSectors(path, format: format, count: 34)
        guard let firmware = firmware(fromFirstSectors: sector0) else {
            throw KilnError(.invalidArgument, "expected a bootable disk image with an MBR or GPT partition table, found none in \(path) (format \(format))")
        }
        return DiskImageInfo(format: format, virtualSizeBytes: size, firmware: firmware)
    }

    /// The first `count` 512-byte sectors of the virtual disk, through qemu-img so that any format works.
    static func readSectors(_ path: String, format: String, count: Int) async throws(KilnError) -> [UInt8] {
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-sectors-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: output) }
        try await Subprocess.check("qemu-img", ["dd", "-U", "-f", format, "-O", "raw", "bs=512", "count=\(count)", "if=\(path)", "of=\(output)"],
                                   timeout: .seconds(60))
        guard let data = FileManager.default.contents(atPath: output) else {
            throw KilnError(.io, "cannot read the partition table of \(path)")
        }
        return Array(data)
    }

    /// MBR signature at 510; a protective MBR (type 0xEE) plus a GPT header at LBA 1 whose partition entries
    /// include an EFI System Partition means UEFI.
    static func firmware(fromFirstSectors bytes: [UInt8]) -> Firmware? {
        guard bytes.count >= 1024, bytes[510] == 0x55, bytes[511] == 0xAA else { return nil }
        let gptSignature = Array("EFI PART".utf8)
        guard Array(bytes[512..<520]) == gptSignature else { return .bios }
        // Partition entries start at LBA 2 in practice (the header's field says where; 34 sectors cover 128 entries).
        let espType: [UInt8] = [0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B]
        let biosBootType: [UInt8] = [0x48, 0x61, 0x68, 0x21, 0x49, 0x64, 0x6F, 0x6E, 0x74, 0x4E, 0x65, 0x65, 0x64, 0x45, 0x46, 0x49]
        var hasESP = false
        var hasBIOSBoot = false
        var offset = 1024
        while offset + 128 <= bytes.count {
            let type = Array(bytes[offset..<offset + 16])
            if type == espType { hasESP = true }
            if type == biosBootType { hasBIOSBoot = true }
            offset += 128
        }
        if hasESP { return .uefi }
        return hasBIOSBoot ? .bios : .uefi
    }

    /// A fixed VHD ends with a 512-byte footer starting with "conectix".
    static func hasVHDFooter(_ path: String) throws(KilnError) -> Bool {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw KilnError(.io, "cannot open \(path)")
        }
        defer { try? handle.close() }
        guard let end = try? handle.seekToEnd(), end >= 512 else { return false }
        try? handle.seek(toOffset: end - 512)
        guard let footer = try? handle.read(upToCount: 8) else { return false }
        return Array(footer) == Array("conectix".utf8)
    }
}
