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

    /// Format, size and firmware of a disk image file. Without `format`, the format is decided here, once (the one
    /// place Kiln lets qemu-img probe: a VHD footer says vpc, otherwise qemu-img's answer); everything after, this
    /// function's own reads included, states it. An image that reads another file (a backing file, a qcow2 external
    /// data file, a VMDK extent elsewhere) is refused unless `allowingBackingFile` (Kiln's own overlays): booting it
    /// would put that host file in front of the guest.
    public static func inspect(_ path: String, format declared: String? = nil, allowingBackingFile: Bool = false) async throws(KilnError) -> DiskImageInfo {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw KilnError(.notFound, "expected a disk image file, found no file at \(path)")
        }
        guard !isDirectory.boolValue else {
            throw KilnError(.invalidArgument, "expected a disk image file, found a directory: \(path)")
        }
        let format: String
        if let declared {
            format = declared
        } else if try hasVHDFooter(path) {
            format = "vpc"
        } else {
            format = try await probeFormat(path)
        }
        guard bootableFormats.contains(format) else {
            throw KilnError(.invalidArgument, "expected a disk image (qcow2, raw, VHD), found qemu format \(format): \(path)")
        }
        let json = try await info(path, format: format)
        guard let size = (json["virtual-size"] as? NSNumber)?.uint64Value else {
            throw KilnError(.invalidArgument, "expected a disk image (qcow2, raw, VHD), found a \(format) file without a virtual size: \(path)")
        }
        if let problem = externalFile(in: json, path: path, allowingBackingFile: allowingBackingFile) {
            throw refusal(path, format: format, problem)
        }
        let sector0 = try await readSectors(path, format: format, count: 34)
        guard let firmware = firmware(fromFirstSectors: sector0) else {
            throw KilnError(.invalidArgument, "expected a bootable disk image with an MBR or GPT partition table, found none in \(path) (format \(format))")
        }
        return DiskImageInfo(format: format, virtualSizeBytes: size, firmware: firmware)
    }

    /// Checks again, before a build boots it, that an image recorded with `format` still reads no other file (an
    /// imported image stays where its owner keeps it, and may have been changed since).
    public static func requireSelfContained(_ path: String, format: String) async throws(KilnError) {
        let json = try await info(path, format: format)
        if let problem = externalFile(in: json, path: path, allowingBackingFile: false) {
            throw refusal(path, format: format, problem)
        }
    }

    static func refusal(_ path: String, format: String, _ problem: String) -> KilnError {
        KilnError(.invalidArgument, "expected a self-contained disk image, found a \(format) image with \(problem): \(path); "
                  + "the guest would read that host file through it. Make a self-contained copy first: "
                  + "qemu-img convert -f \(format) -O qcow2 \(path) standalone.qcow2")
    }

    /// What qemu-img calls the file, asked once, without a format.
    static func probeFormat(_ path: String) async throws(KilnError) -> String {
        let result = try await Subprocess.run("qemu-img", ["info", "--output=json", "-U", path], timeout: .seconds(60))
        guard result.succeeded,
              let json = try? JSONSerialization.jsonObject(with: result.stdout) as? [String: Any],
              let format = json["format"] as? String else {
            throw KilnError(.invalidArgument, "expected a disk image (qcow2, raw, VHD), found a file qemu-img cannot read: \(path): \(result.stderrText.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        return format
    }

    /// `qemu-img info` with the format stated.
    static func info(_ path: String, format: String) async throws(KilnError) -> [String: Any] {
        let result = try await Subprocess.run("qemu-img", ["info", "--output=json", "-U", "-f", format, path], timeout: .seconds(60))
        guard result.succeeded, let json = try? JSONSerialization.jsonObject(with: result.stdout) as? [String: Any] else {
            throw KilnError(.invalidArgument, "expected a \(format) disk image, found a file qemu-img cannot read as \(format): \(path): \(result.stderrText.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        return json
    }

    /// The other file an image reads, described, or nil: a backing file (refused unless allowed), a qcow2 external
    /// data file, a VMDK extent that is not the image file itself.
    static func externalFile(in json: [String: Any], path: String, allowingBackingFile: Bool) -> String? {
        if !allowingBackingFile, let backing = json["backing-filename"] as? String {
            return "a backing file (\(backing))"
        }
        let specific = (json["format-specific"] as? [String: Any])?["data"] as? [String: Any]
        if let dataFile = specific?["data-file"] as? String {
            return "an external data file (\(dataFile))"
        }
        if let extents = specific?["extents"] as? [[String: Any]] {
            var own = stat()
            guard stat(path, &own) == 0 else { return "extents that cannot be checked" }
            for extent in extents {
                let name = extent["filename"] as? String ?? ""
                let resolved = name.hasPrefix("/") ? name : (path as NSString).deletingLastPathComponent + "/" + name
                var other = stat()
                if stat(resolved, &other) != 0 || other.st_dev != own.st_dev || other.st_ino != own.st_ino {
                    return "an extent in another file (\(name))"
                }
            }
        }
        return nil
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
