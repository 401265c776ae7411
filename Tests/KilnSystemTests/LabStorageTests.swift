import Foundation
import KilnDigest
import KilnSupport
import KilnTestSupport
import Testing
@testable import KilnLibvirt

/// libvirt's storage API and host facts against a real libvirtd reached through `qemu+ssh://` (scripts/lab-host),
/// whose pool directory is a tmpfs the test process cannot see: whatever arrives there came through libvirt's stream.
@Suite("Lab host: storage API over qemu+ssh", .serialized, .enabled(if: LabHost.enabled), .labHost)
struct LabStorageTests {
    var lab: LabHost {
        get throws { try #require(LabHost.current) }
    }

    /// A connection to the lab host, closed after `body`.
    func withConnection(_ body: (LibvirtConnection) async throws -> Void) async throws {
        let connection = try await LibvirtConnection.open(try lab.uri)
        do {
            try await body(connection)
        } catch {
            await connection.close()
            throw error
        }
        await connection.close()
    }

    /// `body` must fail with a KilnError of `code`.
    static func expectFailure(_ code: KilnError.Code, sourceLocation: SourceLocation = #_sourceLocation,
                              _ body: () async throws -> Void) async {
        do {
            try await body()
            Issue.record("expected a failure with code \(code)", sourceLocation: sourceLocation)
        } catch {
            #expect((error as? KilnError)?.code == code, "\(error)", sourceLocation: sourceLocation)
        }
    }

    /// A local scratch directory, removed by the caller.
    static func scratch() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-lab-test-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// `megabytes` MiB of random bytes at `path`.
    static func randomFile(_ path: String, megabytes: Int) throws {
        #expect(FileManager.default.createFile(atPath: path, contents: nil))
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<megabytes {
            let words = (0..<(1 << 17)).map { _ in generator.next() as UInt64 }
            try handle.write(contentsOf: words.withUnsafeBytes { Data($0) })
        }
    }

    @Test("the host's facts come from the lab host's daemon: its libvirt, QEMU's version, free memory")
    func hostFacts() async throws {
        var read: LibvirtHostFacts?
        try await withConnection { read = try await $0.hostFacts() }
        let facts = try #require(read)
        #expect(facts.hypervisor == "QEMU")
        #expect(facts.hostname.hasPrefix("kiln-lab"), "the lab host's own name, not this machine's")
        #expect(facts.libvirtVersion == (try Libvirt.libraryVersion()), "the same Debian packages on both sides")
        let qemu = try await Subprocess.check("qemu-system-x86_64", ["--version"]).stdoutText
        #expect(qemu.contains("version \(facts.hypervisorVersion)"), "\(qemu) against \(facts.hypervisorVersion)")
        #expect(facts.freeMemoryBytes > 0 && facts.freeMemoryBytes <= ProcessInfo.processInfo.physicalMemory)
    }

    @Test("a directory pool is defined and started once, then found by name; a missing pool or volume is notFound")
    func pools() async throws {
        try await withConnection { connection in
            let pool = try await connection.directoryPool(named: "kiln-pools", path: try lab.poolDirectory + "/pools")
            let again = try await connection.directoryPool(named: "kiln-pools", path: "/elsewhere/is/ignored")
            #expect(again.name == pool.name)
            let found = try await connection.storagePool(named: "kiln-pools")
            let space = try await found.space()
            // The pool's directory is on the lab host's tmpfs (scripts/lab-host: 4 GiB unless KILN_LAB_POOL_SIZE).
            #expect(space.capacityBytes > 0 && space.availableBytes <= space.capacityBytes)
            #expect(!FileManager.default.fileExists(atPath: try lab.poolDirectory + "/pools"), "made on the lab host only")
            await Self.expectFailure(.notFound) { _ = try await connection.storagePool(named: "no-such-pool") }
            await Self.expectFailure(.notFound) { _ = try await found.volume(named: "no-such-volume") }
        }
    }

    @Test("a qcow2 file uploads into a volume and downloads byte for byte; an overlay on it names it as its backing file; deleted volumes are gone")
    func volumes() async throws {
        let scratch = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let raw = scratch + "/data.raw", source = scratch + "/source.qcow2"
        try Self.randomFile(raw, megabytes: 8)
        try await Subprocess.check("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, source])
        let sourceBytes = UInt64(try FileManager.default.attributesOfItem(atPath: source)[.size] as? Int ?? 0)

        try await withConnection { connection in
            let pool = try await connection.directoryPool(named: "kiln", path: try lab.poolDirectory)
            let before = try await pool.space()

            let base = try await pool.createVolume(StorageVolumeSpec(name: "base.qcow2", capacityBytes: sourceBytes, format: .raw))
            #expect(base.path == (try lab.poolDirectory) + "/base.qcow2")
            let seen = Locked<[TransferProgress]>([])
            try await base.upload(from: source) { progress in seen.withLock { $0.append(progress) } }
            #expect(seen.current.last == TransferProgress(bytesDone: sourceBytes, totalBytes: sourceBytes))
            #expect(!FileManager.default.fileExists(atPath: base.path), "the volume lives on the lab host's tmpfs, not on a disk this process sees")
            #expect(try await base.size().physicalBytes == sourceBytes)
            let after = try await pool.space()
            #expect(after.allocationBytes >= before.allocationBytes + sourceBytes / 2)

            // Refreshed, the pool still knows the volume (libvirt reads the directory again on the lab host).
            try await pool.refresh()
            let found = try await pool.volume(named: "base.qcow2")
            let back = scratch + "/back.qcow2"
            try await found.download(to: back)
            #expect(try SHA256Digest.hex(ofFile: back) == (try SHA256Digest.hex(ofFile: source)))
            // An existing local file is never overwritten.
            await Self.expectFailure(.io) { try await found.download(to: back) }

            let overlay = try await pool.createVolume(.overlay(name: "overlay.qcow2", on: base, backingFormat: .qcow2, capacityBytes: 8 << 20))
            let overlayCopy = scratch + "/overlay.qcow2"
            try await overlay.download(to: overlayCopy)
            let info = try await Subprocess.check("qemu-img", ["info", "--output=json", "-U", overlayCopy]).stdoutText
            let json = try #require(try JSONSerialization.jsonObject(with: Data(info.utf8)) as? [String: Any])
            #expect(json["format"] as? String == "qcow2")
            #expect(json["backing-filename"] as? String == base.path)
            #expect(json["backing-filename-format"] as? String == "qcow2")
            #expect(json["virtual-size"] as? Int == 8 << 20)

            try await overlay.delete()
            try await base.delete()
            for name in ["overlay.qcow2", "base.qcow2"] {
                await Self.expectFailure(.notFound) { _ = try await pool.volume(named: name) }
            }
        }
    }

    @Test("a 64 MiB upload and download through the SSH transport, timed; a cancelled upload stops with .cancelled")
    func throughputAndCancel() async throws {
        let scratch = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let file = scratch + "/big.raw"
        let megabytes = 64
        try Self.randomFile(file, megabytes: megabytes)
        try await withConnection { connection in
            let pool = try await connection.directoryPool(named: "kiln", path: try lab.poolDirectory)
            let volume = try await pool.createVolume(StorageVolumeSpec(name: "big.raw", capacityBytes: UInt64(megabytes) << 20, format: .raw))

            let clock = ContinuousClock()
            let uploadTime = try await clock.measure { try await volume.upload(from: file) }
            let back = scratch + "/back.raw"
            let downloadTime = try await clock.measure { try await volume.download(to: back) }
            #expect(try SHA256Digest.hex(ofFile: back) == (try SHA256Digest.hex(ofFile: file)))
            print(String(format: "lab storage: %d MiB upload %.1f MiB/s, download %.1f MiB/s (qemu+ssh, libvirt stream)",
                         megabytes, Double(megabytes) / uploadTime.inSeconds, Double(megabytes) / downloadTime.inSeconds))

            // Cancelled once the first chunk is through: the stream is aborted, the task ends with .cancelled.
            let firstChunk = AsyncStream<Void>.makeStream()
            let upload = Task { try await volume.upload(from: file) { _ in firstChunk.continuation.yield() } }
            for await _ in firstChunk.stream { break }
            upload.cancel()
            let outcome = await upload.result
            guard case .failure(let error) = outcome else {
                Issue.record("the cancelled upload finished")
                return
            }
            #expect((error as? KilnError)?.code == .cancelled, "\(error)")
            // The connection still works after an aborted stream.
            try await volume.delete()
        }
    }
}
