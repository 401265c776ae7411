import Foundation
import Testing
import KilnDigest
import KilnGuestfs
import KilnLibvirt

@Suite("C libraries")
struct CLibraryTests {
    @Test("OpenSSL SHA-256 matches the FIPS 180-2 test vectors")
    func sha256Vectors() throws {
        #expect(try SHA256Digest.hex(of: "") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(try SHA256Digest.hex(of: "abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(try SHA256Digest.hex(of: "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")
                == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }

    @Test("streaming a file in chunks equals hashing it at once, across chunk boundaries")
    func sha256File() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-digest-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        // One million 'a's (a FIPS vector) plus 3 MiB of patterned bytes: several 1 MiB reads and a ragged end.
        var bytes = [UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000)
        let million = try SHA256Digest.hex(of: bytes)
        #expect(million == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
        bytes += (0..<(3 << 20) + 17).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        #expect(FileManager.default.createFile(atPath: path, contents: Data(bytes)))
        #expect(try SHA256Digest.hex(ofFile: path) == SHA256Digest.hex(of: bytes))

        let digest = try SHA256Digest()
        for chunk in stride(from: 0, to: bytes.count, by: 4099) {
            try digest.update(Array(bytes[chunk..<min(chunk + 4099, bytes.count)]))
        }
        #expect(try digest.finish() == SHA256Digest.hex(of: bytes))
    }

    @Test("a missing file is a clear error")
    func sha256Missing() {
        #expect(throws: (any Error).self) { try SHA256Digest.hex(ofFile: "/nonexistent/kiln-file") }
    }

    @Test("checksums compare without regard to case")
    func checksumCase() {
        #expect(ChecksumCheck.matches(expected: "ABCDEF", actual: "abcdef"))
        #expect(!ChecksumCheck.matches(expected: "abcdee", actual: "abcdef"))
    }

    @Test("libvirt reports its version")
    func libvirtVersion() throws {
        let version = try Libvirt.libraryVersion()
        #expect(version.split(separator: ".").count == 3)
        #expect(!version.hasPrefix("0."))
    }

    @Test("a libguestfs handle is created and closed")
    func guestfsHandle() throws {
        let handle = try GuestfsHandle()
        #expect(handle.isOpen)
        #expect(try handle.libraryVersion().hasPrefix("1."))
        handle.close()
        #expect(!handle.isOpen)
        handle.close()
    }
}
