import Foundation
import KilnDigest
import KilnSupport
import KilnTestSupport
import Testing
@testable import KilnLibvirt
@testable import KilnMachine

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
            try await pool.refresh()
            let before = try await pool.space()

            let base = try await pool.createVolume(StorageVolumeSpec(name: "base.qcow2", capacityBytes: sourceBytes, format: .raw))
            #expect(base.path == (try lab.poolDirectory) + "/base.qcow2")
            let seen = Locked<[TransferProgress]>([])
            try await base.upload(from: source) { progress in seen.withLock { $0.append(progress) } }
            #expect(seen.current.last == TransferProgress(bytesDone: sourceBytes, totalBytes: sourceBytes))
            #expect(!FileManager.default.fileExists(atPath: base.path), "the volume lives on the lab host's tmpfs, not on a disk this process sees")
            #expect(try await base.size().physicalBytes == sourceBytes)
            // libvirt refreshes the pool after an upload on a thread of its own, which may not have run yet (CI, under
            // load, saw the space from before): measured now, the upload's blocks are there.
            try await pool.refresh()
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

    @Test("builds wanting the same source on one host at once upload it once; a source volume cut off mid-upload is uploaded again by one of them, never deleted under another's upload")
    func sharedSourceUpload() async throws {
        let scratch = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let file = scratch + "/source.raw"
        try Self.randomFile(file, megabytes: 24)
        let sha256 = try SHA256Digest.hex(ofFile: file)
        let image = SourceImage(path: file, format: "raw", virtualSizeBytes: 24 << 20, firmware: .bios, osType: "Linux",
                                hasCloudInit: true, urn: nil)
        let name = "kiln-source-\(sha256).raw"
        let uri = try lab.uri, poolDirectory = try lab.poolDirectory

        try await withConnection { connection in
            let pool = try await connection.directoryPool(named: "kiln", path: poolDirectory)
            // What a controller that died mid-upload leaves: the volume, part written, and no marker.
            let cutOff = try await pool.createVolume(StorageVolumeSpec(name: name, capacityBytes: 24 << 20, format: .raw))
            let cutOffStamp = try await cutOff.stamp()
            #expect(cutOffStamp.modified != nil && cutOffStamp.changed != nil, "the host's file times, from libvirt's volume XML")

            // Two builds, each with its own connection as two kiln processes have.
            let events = Locked<[String]>([])
            try await withThrowingTaskGroup(of: Void.self) { group in
                for build in 1...2 {
                    group.addTask {
                        let own = try await LibvirtConnection.open(uri)
                        do {
                            let pool = try await own.storagePool(named: "kiln")
                            _ = try await RemoteDisks.uploadedSource(image, format: .raw, into: pool, host: "lab", stalledAfter: .seconds(2)) { line in
                                events.withLock { $0.append("\(build): \(line)") }
                            }
                        } catch {
                            await own.close()
                            throw error
                        }
                        await own.close()
                    }
                }
                do {
                    try await group.waitForAll()
                } catch {
                    Issue.record("\(error); what the builds said: \(events.current)")
                    throw error
                }
            }
            let lines = events.current
            #expect(lines.filter { $0.contains("uploaded the source to lab") }.count == 1, "\(lines)")
            #expect(lines.filter { $0.contains("stopped growing without being completed") }.count == 1, "\(lines)")
            #expect(lines.contains { $0.contains("completed by another build") || $0.contains("is on lab already") }, "\(lines)")

            let back = scratch + "/back.raw"
            try await pool.volume(named: name).download(to: back)
            #expect(try SHA256Digest.hex(ofFile: back) == sha256)
            await Self.expectFailure(.notFound) { _ = try await pool.volume(named: "kiln-source-\(sha256).reclaim") }
            #expect(try await pool.volume(named: name).stamp().changed != cutOffStamp.changed, "a new file under the same name")

            // A third build finds it complete.
            let third = Locked<[String]>([])
            _ = try await RemoteDisks.uploadedSource(image, format: .raw, into: pool, host: "lab") { line in third.withLock { $0.append(line) } }
            #expect(third.current.contains { $0.contains("is on lab already") }, "\(third.current)")

            try await pool.volume(named: name).delete()
            try await pool.volume(named: "kiln-source-\(sha256).complete").delete()
        }
    }
}
