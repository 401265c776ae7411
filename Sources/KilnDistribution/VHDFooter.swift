import Foundation
import KilnSupport

/// The 512-byte footer of a VHD (Microsoft's Virtual Hard Disk Image Format Specification), big-endian.
/// Kiln reads it back after writing a VHD and refuses an output Azure would refuse.
public struct VHDFooter: Sendable, Equatable {
    public var cookie: String
    public var features: UInt32
    public var formatVersion: UInt32
    public var dataOffset: UInt64
    public var timestamp: UInt32
    public var creatorApplication: String
    public var originalSize: UInt64
    public var currentSize: UInt64
    public var cylinders: UInt16
    public var heads: UInt8
    public var sectorsPerTrack: UInt8
    /// 2 fixed, 3 dynamic, 4 differencing.
    public var diskType: UInt32
    public var checksum: UInt32
    public var computedChecksum: UInt32

    public static let size = 512

    public init(bytes: [UInt8]) throws(KilnError) {
        guard bytes.count == VHDFooter.size else { throw KilnError(.invalidArgument, "a VHD footer is 512 bytes, found \(bytes.count)") }
        func u32(_ offset: Int) -> UInt32 { bytes[offset..<offset + 4].reduce(0) { $0 << 8 | UInt32($1) } }
        func u64(_ offset: Int) -> UInt64 { bytes[offset..<offset + 8].reduce(0) { $0 << 8 | UInt64($1) } }
        cookie = String(decoding: bytes[0..<8], as: UTF8.self)
        features = u32(8)
        formatVersion = u32(12)
        dataOffset = u64(16)
        timestamp = u32(24)
        creatorApplication = String(decoding: bytes[28..<32], as: UTF8.self)
        originalSize = u64(40)
        currentSize = u64(48)
        cylinders = UInt16(bytes[56]) << 8 | UInt16(bytes[57])
        heads = bytes[58]
        sectorsPerTrack = bytes[59]
        diskType = u32(60)
        checksum = u32(64)
        // One's complement of the sum of all bytes, with the checksum field counted as zero.
        var sum: UInt32 = 0
        for (index, byte) in bytes.enumerated() where !(64..<68).contains(index) { sum &+= UInt32(byte) }
        computedChecksum = ~sum
    }

    /// Reads the footer at the end of `path`.
    public static func read(_ path: String) throws(KilnError) -> VHDFooter {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw KilnError(.io, "cannot open \(path)") }
        defer { try? handle.close() }
        guard let end = try? handle.seekToEnd(), end >= UInt64(size) else {
            throw KilnError(.invalidArgument, "\(path) is too small to be a VHD")
        }
        try? handle.seek(toOffset: end - UInt64(size))
        guard let data = try? handle.read(upToCount: size) else { throw KilnError(.io, "cannot read the footer of \(path)") }
        return try VHDFooter(bytes: Array(data))
    }

    /// nil when this is an Azure-valid fixed VHD footer for a file of `fileSize` bytes; otherwise the problem.
    public func azureProblem(fileSize: UInt64) -> String? {
        if cookie != "conectix" { return "expected the cookie \"conectix\", found \"\(cookie)\"" }
        if checksum != computedChecksum { return "expected footer checksum \(String(computedChecksum, radix: 16)), found \(String(checksum, radix: 16))" }
        if diskType != 2 { return "expected a fixed VHD (disk type 2), found disk type \(diskType)" }
        if dataOffset != UInt64.max { return "expected data offset 0xFFFFFFFFFFFFFFFF for a fixed VHD, found \(dataOffset)" }
        if currentSize % (1 << 20) != 0 { return "expected a virtual size that is a whole number of MiB, found \(currentSize) bytes" }
        if fileSize != currentSize + UInt64(VHDFooter.size) {
            return "expected the file to be the virtual size plus the 512-byte footer (\(currentSize + 512) bytes), found \(fileSize)"
        }
        return nil
    }
}
