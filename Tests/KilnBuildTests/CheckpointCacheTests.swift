import Foundation
import KilnBuild
import KilnMachine
import KilnSupport
import KilnTemplate
import Testing

@Suite("Build cache")
struct CheckpointCacheTests {
    /// A cache in a fresh folder, with checkpoints made of small files.
    struct Fixture {
        let root: String
        let cache: CheckpointCache

        init() throws {
            root = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-cache-\(UUID().uuidString)").path
            cache = CheckpointCache(directory: root + "/checkpoints")
            try FileManager.default.createDirectory(atPath: cache.directory, withIntermediateDirectories: true)
        }

        func remove() { try? FileManager.default.removeItem(atPath: root) }

        /// A committed checkpoint whose memory image holds `bytes` bytes of data, used `usedSecondsAgo` ago.
        @discardableResult
        func make(_ key: String, parent: CheckpointEntry? = nil, step: Int? = nil, bytes: Int = 64 * 1024,
                  usedSecondsAgo: TimeInterval = 0, runID: String = "run1") throws -> CheckpointEntry {
            let pending = try cache.begin(key: key, runID: runID)
            try Data(repeating: 0x5A, count: bytes).write(to: URL(fileURLWithPath: pending.folder + "/memory.save"))
            let machine = MachineCheckpoint(directory: pending.folder, rootDirectory: parent?.machine.rootDirectory ?? pending.folder,
                                            username: "packer", hostKey: "ssh-ed25519 AAAA", domainUUID: UUID().uuidString,
                                            domainName: "kiln-\(runID)", hasSeed: true)
            let used = Date().addingTimeInterval(-usedSecondsAgo)
            let entry = CheckpointEntry(key: key, parentKey: parent?.key, parentFolder: parent?.folder, step: step,
                                        label: step.map { "customize[\($0)]" } ?? "boot", templateName: "t", runID: runID,
                                        createdAt: used, lastUsedAt: used, machine: machine)
            try cache.commit(entry)
            return entry
        }
    }

    static let source = SourceImage(path: "/dev/null", format: "qcow2", virtualSizeBytes: 1 << 32, firmware: .bios, osType: "Linux",
                                    hasCloudInit: true, urn: "Debian:debian-12:12:1")

    @Test("keys: editing one customizer changes its key and the later ones only; a changed download changes its step's key")
    func keys() throws {
        let size = try VMSize.named("Standard_D2s_v3")
        let boot = try CheckpointKeys.boot(source: Self.source, size: size, osDiskSizeGB: 0, accelerator: .tcg, username: "packer")
        #expect(boot != (try CheckpointKeys.boot(source: Self.source, size: size, osDiskSizeGB: 0, accelerator: .kvm, username: "packer")))
        #expect(boot != (try CheckpointKeys.boot(source: Self.source, size: try VMSize.named("Standard_D4s_v3"), osDiskSizeGB: 0, accelerator: .tcg, username: "packer")))
        #expect(boot != (try CheckpointKeys.boot(source: Self.source, size: size, osDiskSizeGB: 30, accelerator: .tcg, username: "packer")))
        // A remote host's checkpoints are its own (their volumes are in its pool); this machine's keys are unchanged.
        let lab1 = try CheckpointKeys.boot(source: Self.source, size: size, osDiskSizeGB: 0, accelerator: .tcg, username: "packer",
                                           host: "qemu+ssh://root@lab1/system pool kiln")
        #expect(boot == (try CheckpointKeys.boot(source: Self.source, size: size, osDiskSizeGB: 0, accelerator: .tcg, username: "packer", host: nil)))
        #expect(lab1 != boot)
        #expect(lab1 != (try CheckpointKeys.boot(source: Self.source, size: size, osDiskSizeGB: 0, accelerator: .tcg, username: "packer",
                                                 host: "qemu+ssh://root@lab2/system pool kiln")))
        func chain(_ steps: [Customizer], downloads: [String?]) throws -> [String] {
            var keys = [boot]
            for (index, step) in steps.enumerated() {
                keys.append(try CheckpointKeys.step(parent: keys[index], index: index, step: step, downloadedSHA256: downloads[index]))
            }
            return keys
        }
        let one = Customizer.shell(ShellCustomizer(name: "one", script: .inline(["echo 1"])))
        let two = Customizer.shell(ShellCustomizer(name: "two", script: .scriptUri("https://example.invalid/two.sh")))
        let three = Customizer.shell(ShellCustomizer(name: "three", script: .inline(["echo 3"])))
        let original = try chain([one, two, three], downloads: [nil, "aa", nil])
        let editedThird = try chain([one, two, .shell(ShellCustomizer(name: "three", script: .inline(["echo THREE"])))], downloads: [nil, "aa", nil])
        #expect(Array(original.prefix(3)) == Array(editedThird.prefix(3)))
        #expect(original[3] != editedThird[3])
        let newScriptContent = try chain([one, two, three], downloads: [nil, "bb", nil])
        #expect(Array(original.prefix(2)) == Array(newScriptContent.prefix(2)))
        #expect(original[2] != newScriptContent[2] && original[3] != newScriptContent[3])
        let reordered = try chain([two, one, three], downloads: ["aa", nil, nil])
        #expect(original[1] != reordered[1])
        #expect(Set(original).count == 4)
    }

    @Test("lookup finds the newest complete checkpoint for a key, never one whose parent is gone or that is unfinished")
    func lookup() throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        let boot = try fixture.make("k0")
        let step = try fixture.make("k1", parent: boot, step: 0)
        #expect(fixture.cache.lookup("k1")?.folder == step.folder)
        #expect(fixture.cache.chain(of: step).map(\.key) == ["k1", "k0"])
        // An unfinished checkpoint (no meta.json) is invisible while its build holds it.
        let pending = try fixture.cache.begin(key: "k2", runID: "run2")
        #expect(fixture.cache.lookup("k2") == nil)
        #expect(FileManager.default.fileExists(atPath: pending.folder))
        let mode = (try? FileManager.default.attributesOfItem(atPath: pending.folder)[.posixPermissions] as? Int) ?? 0
        #expect(mode == 0o700, "the guest's memory image goes in: the folder is the user's alone")
        // A parent that disappeared makes the child unusable.
        try FileManager.default.removeItem(atPath: boot.machine.directory)
        #expect(fixture.cache.lookup("k1") == nil)
        #expect(fixture.cache.lookup("nothing") == nil)
    }

    @Test("removing a checkpoint removes what was built on it; a checkpoint in use stays with its subtree")
    func removeAndHold() throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        let boot = try fixture.make("k0")
        let one = try fixture.make("k1", parent: boot, step: 0)
        let two = try fixture.make("k2", parent: one, step: 1)
        let other = try fixture.make("x1", parent: boot, step: 0)
        do {
            let hold = try #require(fixture.cache.hold(two))
            let refused = fixture.cache.remove(one)
            #expect(refused.removed.isEmpty)
            #expect(refused.inUse.map(\.key) == ["k2"])
            #expect(fixture.cache.entries().count == 4)
            _ = hold
        }
        let removal = fixture.cache.remove(one)
        #expect(Set(removal.removed.map(\.key)) == ["k1", "k2"])
        #expect(removal.freedBytes >= 2 * 64 * 1024)
        #expect(fixture.cache.entries().map(\.key).sorted() == ["k0", "x1"])
        #expect(fixture.cache.lookup(other.key) != nil)
    }

    @Test("prune: unused for too long, then least recently used until the cache fits; leaves go before their parents")
    func prune() throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        let mebibyte = 1 << 20
        let boot = try fixture.make("k0", bytes: mebibyte, usedSecondsAgo: 10)
        let recent = try fixture.make("k1", parent: boot, step: 0, bytes: mebibyte, usedSecondsAgo: 10)
        let stale = try fixture.make("s1", parent: boot, step: 0, bytes: mebibyte, usedSecondsAgo: 9 * 86400)
        let old = fixture.cache.prune(olderThan: .seconds(7 * 86400))
        #expect(old.removed.map(\.key) == ["s1"])
        #expect(!FileManager.default.fileExists(atPath: stale.machine.directory))
        try fixture.make("k2", parent: recent, step: 1, bytes: mebibyte, usedSecondsAgo: 10)
        let fit = fixture.cache.prune(maxBytes: UInt64(2 * mebibyte) + 8192)
        #expect(fit.removed.map(\.key) == ["k2"], "the leaf goes first when all were used at once")
        #expect(fixture.cache.entries().map(\.key).sorted() == ["k0", "k1"])
        let all = fixture.cache.prune(maxBytes: 0)
        #expect(Set(all.removed.map(\.key)) == ["k0", "k1"])
        #expect(fixture.cache.entries().isEmpty)
    }

    @Test("a folder a dead build left without meta.json is swept once it is a minute old; a damaged one goes with prune")
    func abandoned() throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        let abandoned = fixture.cache.directory + "/kdead-run9"
        try FileManager.default.createDirectory(atPath: abandoned, withIntermediateDirectories: true)
        try Data(count: 1024).write(to: URL(fileURLWithPath: abandoned + "/disk.qcow2"))
        _ = fixture.cache.entries()
        #expect(FileManager.default.fileExists(atPath: abandoned), "too young: its build may be about to lock it")
        try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(-600)], ofItemAtPath: abandoned)
        _ = fixture.cache.entries()
        #expect(!FileManager.default.fileExists(atPath: abandoned))

        let damaged = fixture.cache.directory + "/kbad-run9"
        try FileManager.default.createDirectory(atPath: damaged, withIntermediateDirectories: true)
        try Data("{not json".utf8).write(to: URL(fileURLWithPath: damaged + "/meta.json"))
        #expect(fixture.cache.unreadableFolders() == [damaged])
        _ = fixture.cache.prune(maxBytes: 1 << 40)
        #expect(!FileManager.default.fileExists(atPath: damaged))
    }

    @Test("sizes and ages as people write them")
    func parsing() {
        #expect(ByteSize.parse("20G") == 20 << 30)
        #expect(ByteSize.parse("512M") == 512 << 20)
        #expect(ByteSize.parse("1.5GiB") == 3 << 29)
        #expect(ByteSize.parse("4096") == 4096)
        #expect(ByteSize.parse("lots") == nil)
        #expect(ByteSize.parse("-1G") == nil)
        #expect(AgeText.parse("7d") == .seconds(7 * 86400))
        #expect(AgeText.parse("1d12h") == .seconds(36 * 3600))
        #expect(AgeText.parse("30m") == .seconds(1800))
        #expect(AgeText.parse("soon") == nil)
        #expect(CheckpointCache.defaultLimitBytes(environment: [:]) == 20 << 30)
        #expect(CheckpointCache.defaultLimitBytes(environment: ["KILN_CACHE_MAX_SIZE": "5G"]) == 5 << 30)
    }

    @Test("a remote checkpoint counts its volumes on the host with its folder here; an older meta.json without them still reads")
    func remoteCheckpoint() throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        let local = try fixture.make("k1", bytes: 0)
        let localBytes = fixture.cache.sizeBytes(local)
        var remote = local
        remote.machine.remote = RemoteCheckpointFiles(uri: "qemu+ssh://root@lab1/system", pool: "kiln", poolDirectory: "/var/lib/kiln",
                                                      memoryVolume: "kiln-ckpt-\(local.folder).memory", diskVolume: "kiln-ckpt-\(local.folder).qcow2",
                                                      nvramVolume: nil, layers: [RemoteLayer(volume: "kiln-ckpt-\(local.folder).qcow2", localCopy: local.machine.diskPath)],
                                                      bytes: 300 << 20)
        try fixture.cache.commit(remote)
        let read = try #require(fixture.cache.lookup("k1"))
        #expect(read.machine.remote == remote.machine.remote)
        #expect(read.machine.memoryPath == "/var/lib/kiln/kiln-ckpt-\(local.folder).memory", "the memory image is a path on the host")
        #expect(fixture.cache.sizeBytes(read) == localBytes + (300 << 20))
        #expect(read.machine.remote?.volumes == ["kiln-ckpt-\(local.folder).memory", "kiln-ckpt-\(local.folder).qcow2"])

        // What Kiln wrote before remote checkpoints existed: no "remote" key.
        let meta = local.machine.directory + "/meta.json"
        var json = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: meta))) as? [String: Any])
        var machine = try #require(json["machine"] as? [String: Any])
        machine.removeValue(forKey: "remote")
        json["machine"] = machine
        try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: meta))
        #expect(fixture.cache.lookup("k1")?.machine.remote == nil)
        #expect(fixture.cache.lookup("k1")?.machine.memoryPath == local.machine.directory + "/memory.save")
    }
}
