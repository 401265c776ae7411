import Foundation
import KilnSupport

/// Writes the Azure-valid fixed VHD: virtual size rounded up to a whole MiB, data followed by a 512-byte footer,
/// sparse on the host, written under a temporary name and renamed only when complete.
public enum VHDWriter {
    public static let mebibyte: UInt64 = 1 << 20

    public static func roundedSize(_ bytes: UInt64) -> UInt64 {
        (bytes + mebibyte - 1) / mebibyte * mebibyte
    }

    /// Converts `disk` (any qemu format) to a fixed VHD at `destination`. qemu-img skips zero blocks, so the
    /// output stays sparse and the time follows the data, not the virtual size.
    public static func write(disk: String, format: String, virtualSizeBytes: UInt64, to destination: String) async throws(KilnError) {
        let directory = (destination as NSString).deletingLastPathComponent
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw KilnError(.io, "cannot create \(directory) for the VHD: \(error.localizedDescription)")
        }
        let temporary = directory + "/." + (destination as NSString).lastPathComponent + ".partial-\(getpid())"
        ProcessWatchdog.shared?.removeOnDeath(temporary)
        ProcessWatchdog.shared?.removeOnDeath(temporary + ".padded.qcow2")
        defer { try? FileManager.default.removeItem(atPath: temporary) }
        var source = disk
        var sourceFormat = format
        let size = roundedSize(virtualSizeBytes)
        if size != virtualSizeBytes {
            // Round up through a thin overlay, so the build's disk stays as it is.
            let padded = temporary + ".padded.qcow2"
            try await Subprocess.check("qemu-img", ["create", "-q", "-f", "qcow2", "-F", format, "-b", disk, padded, String(size)])
            source = padded
            sourceFormat = "qcow2"
        }
        defer { if source != disk { try? FileManager.default.removeItem(atPath: source) } }
        // -m 8 -W: several requests in flight, written out of order (a fixed VHD is raw data and a footer), so
        // reading the layers and decompressing compressed sources overlap.
        try await Subprocess.check("qemu-img", ["convert", "-q", "-m", "8", "-W", "-f", sourceFormat, "-O", "vpc", "-o", "subformat=fixed,force_size", source, temporary],
                                   timeout: .seconds(6 * 3600))
        // Check what Azure will check before the file gets its final name.
        let fileSize = (try? FileManager.default.attributesOfItem(atPath: temporary)[.size] as? NSNumber)?.uint64Value ?? 0
        let footer = try VHDFooter.read(temporary)
        if let problem = footer.azureProblem(fileSize: fileSize) {
            throw KilnError(.external, "qemu-img wrote a VHD Azure would reject: \(problem)")
        }
        guard footer.currentSize == size else {
            throw KilnError(.external, "the VHD's virtual size is \(footer.currentSize) bytes, expected \(size)")
        }
        try AtomicFile.rename(temporary, to: destination)
    }
}
