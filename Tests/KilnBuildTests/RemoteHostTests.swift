import Foundation
import KilnDigest
import KilnLibvirt
import KilnMachine
import KilnSupport
import Testing

/// What a remote `--connect` URI gives a build: the host, and the ssh options its guest tunnel logs in with.
struct RemoteHostTests {
    @Test func theURIsSSHOptionsAreTheTunnels() throws {
        let remote = try RemoteHost(uri: "qemu+ssh://root@10.0.0.5:2222/system?keyfile=/keys/id&command=/opt/lab/ssh&known_hosts=/keys/known", pool: "images")
        #expect(remote.host == "10.0.0.5")
        #expect(remote.destination == "root@10.0.0.5")
        #expect(remote.pool == "images")
        #expect(remote.sshCommand == "/opt/lab/ssh")
        #expect(remote.sshOptions == ["-o", "BatchMode=yes", "-p", "2222", "-i", "/keys/id", "-o", "UserKnownHostsFile=/keys/known"])

        let plain = try RemoteHost(uri: "qemu+ssh://lab1/system?no_verify=1", pool: "kiln")
        #expect(plain.destination == "lab1")
        #expect(plain.sshCommand == "ssh")
        #expect(plain.sshOptions == ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
    }

    @Test func otherURIsAreRefusedWithTheReason() {
        for (uri, words) in [("qemu+tls://lab1/system", "qemu+ssh://"), ("qemu+ssh://lab1/session", "/system"),
                             ("qemu:///system", "remote libvirt URI")] {
            do {
                _ = try RemoteHost(uri: uri, pool: "kiln")
                Issue.record("\(uri) was accepted")
            } catch {
                #expect(error.message.contains(words) && error.message.contains(uri), "\(error)")
            }
        }
    }

    @Test("a volume's stamp is its allocation and its file's times from libvirt's XML: a file made again under the same name differs")
    func volumeStamps() {
        func xml(allocation: Int, mtime: String, ctime: String) -> String {
            """
            <volume type='file'>
              <name>kiln-source-ab.qcow2</name>
              <capacity unit='bytes'>25165824</capacity>
              <allocation unit='bytes'>\(allocation)</allocation>
              <physical unit='bytes'>25165824</physical>
              <target>
                <path>/pool/kiln-source-ab.qcow2</path>
                <format type='raw'/>
                <timestamps>
                  <atime>1764770000.100000000</atime>
                  <mtime>\(mtime)</mtime>
                  <ctime>\(ctime)</ctime>
                </timestamps>
              </target>
            </volume>
            """
        }
        let cutOff = StorageVolumeStamp(xml: xml(allocation: 4096, mtime: "1764770001.5", ctime: "1764770001.5"))
        #expect(cutOff.allocationBytes == 4096 && cutOff.modified == "1764770001.5" && cutOff.changed == "1764770001.5")
        #expect(cutOff == StorageVolumeStamp(xml: xml(allocation: 4096, mtime: "1764770001.5", ctime: "1764770001.5")))
        #expect(cutOff != StorageVolumeStamp(xml: xml(allocation: 8192, mtime: "1764770001.5", ctime: "1764770001.5")), "written to")
        #expect(cutOff != StorageVolumeStamp(xml: xml(allocation: 4096, mtime: "1764770001.5", ctime: "1764770009.25")), "made again")
        #expect(StorageVolumeStamp(xml: "<volume/>") == StorageVolumeStamp(xml: "<volume></volume>"))
    }

    @Test("a source's sha256 is read once and remembered until the file changes (content, or another file under its name)")
    func sourceDigests() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-digests-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let digests = SourceDigests(path: folder + "/cache/source-sha256.json")
        let image = folder + "/source.qcow2"
        try Data("first image".utf8).write(to: URL(fileURLWithPath: image))
        let first = try digests.sha256(ofFile: image)
        let firstHex = try SHA256Digest.hex(ofFile: image)
        #expect(first.hex == firstHex && !first.remembered)
        let again = try digests.sha256(ofFile: image)
        #expect(again.hex == first.hex && again.remembered)
        let respelled = try digests.sha256(ofFile: folder + "/./source.qcow2")
        #expect(respelled.hex == first.hex && respelled.remembered, "the same file by another spelling")

        // Same size, new bytes: the modification time differs.
        Thread.sleep(forTimeInterval: 0.01)
        try Data("other image".utf8).write(to: URL(fileURLWithPath: image))
        let changed = try digests.sha256(ofFile: image)
        #expect(changed.hex != first.hex && !changed.remembered)
        #expect(changed.hex == (try SHA256Digest.hex(ofFile: image)))

        // Another file moved over it, with the old file's times: a new inode.
        let other = folder + "/other.qcow2"
        try Data("third image".utf8).write(to: URL(fileURLWithPath: other))
        let times = try FileManager.default.attributesOfItem(atPath: image)[.modificationDate] as? Date
        try FileManager.default.setAttributes([.modificationDate: times as Any], ofItemAtPath: other)
        try FileManager.default.removeItem(atPath: image)
        try FileManager.default.moveItem(atPath: other, toPath: image)
        let replaced = try digests.sha256(ofFile: image)
        let replacedHex = try SHA256Digest.hex(ofFile: image)
        #expect(!replaced.remembered && replaced.hex == replacedHex)
    }
}

/// Which of several hosts a build goes to (`HostChoice.rank`, first): fewest Kiln builds running, then most free memory,
/// then the order given.
struct HostChoiceTests {
    @Test func fewestBuildsThenMostMemoryThenOrder() {
        let gib: UInt64 = 1 << 30
        let busyBig = HostChoice.Candidate(uri: "qemu+ssh://a/system", freeMemoryBytes: 60 * gib, runningBuilds: 2)
        let idleSmall = HostChoice.Candidate(uri: "qemu+ssh://b/system", freeMemoryBytes: 8 * gib, runningBuilds: 0)
        let idleBig = HostChoice.Candidate(uri: "qemu+ssh://c/system", freeMemoryBytes: 30 * gib, runningBuilds: 0)
        let idleBigToo = HostChoice.Candidate(uri: "qemu+ssh://d/system", freeMemoryBytes: 30 * gib, runningBuilds: 0)
        #expect(HostChoice.rank([busyBig, idleSmall]).first == idleSmall)
        #expect(HostChoice.rank([busyBig, idleSmall, idleBig]).first == idleBig)
        #expect(HostChoice.rank([idleBigToo, idleBig]).first == idleBigToo)
        #expect(HostChoice.rank([]).first == nil)
        #expect(HostChoice.rank([busyBig, idleSmall, idleBig]) == [idleBig, idleSmall, busyBig], "the order a build tries them in")
    }

    @Test("a host's builds: its running kiln- domains and this controller's placed runs, each once")
    func buildsCountedOnce() {
        #expect(HostChoice.runningBuilds(domains: ["kiln-a", "other-vm", "kiln-b"], placedRuns: []) == 2)
        #expect(HostChoice.runningBuilds(domains: ["kiln-a"], placedRuns: ["a", "c"]) == 2, "run a runs already; run c is placed, not yet running")
        #expect(HostChoice.runningBuilds(domains: [], placedRuns: ["c"]) == 1)
    }

    @Test("placements: recorded per run, counted while the placing process lives, gone when removed or when it died")
    func placements() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-placements-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let placements = HostPlacements(directory: folder)
        try await placements.locked { () throws(KilnError) in
            try placements.record(runID: "r1", uri: "qemu+ssh://a/system")
            try placements.record(runID: "r2", uri: "qemu+ssh://a/system")
            try placements.record(runID: "r3", uri: "qemu+ssh://b/system")
        }
        var live = placements.live()
        #expect(live["qemu+ssh://a/system"]?.sorted() == ["r1", "r2"] && live["qemu+ssh://b/system"] == ["r3"])
        // Moved to another host (a build whose first host could not start it).
        try placements.record(runID: "r2", uri: "qemu+ssh://b/system")
        placements.remove(runID: "r1")
        live = placements.live()
        #expect(live["qemu+ssh://a/system"] == nil && live["qemu+ssh://b/system"]?.sorted() == ["r2", "r3"])
        // A placement whose process is gone (a worker killed outright) no longer counts, and its file goes.
        let dead = ProcessIdentity(bootID: ProcessIdentity.current.bootID, pid: Int32.max - 1, startTicks: 1)
        try #"{"uri": "qemu+ssh://a/system", "process": "\#(dead.description)"}"#.write(toFile: folder + "/r9.json", atomically: true, encoding: .utf8)
        #expect(placements.live()["qemu+ssh://a/system"] == nil)
        #expect(!FileManager.default.fileExists(atPath: folder + "/r9.json"))
    }
}
