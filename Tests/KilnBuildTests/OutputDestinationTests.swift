import Foundation
@testable import KilnBuild
@testable import KilnDistribution
import KilnSupport
import Testing

@Suite("Where a VHD target may be written")
struct OutputDestinationTests {
    let directory: String

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-outputs-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory + "/real", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: directory + "/state/runs", withIntermediateDirectories: true)
    }

    func message(_ body: () throws(KilnError) -> Void) -> String? {
        do {
            try body()
            return nil
        } catch {
            return error.message
        }
    }

    @Test("an existing file is refused without --force and replaced with it; links and directories never")
    func existingTargets() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let target = directory + "/real/out.vhd"
        #expect(message { () throws(KilnError) in try OutputDestination.check(target, field: "t.json: properties.distribute[0].uri", force: false, protected: []) } == nil)
        try Data("someone else's".utf8).write(to: URL(fileURLWithPath: target))
        let refused = message { () throws(KilnError) in try OutputDestination.check(target, field: "t.json: properties.distribute[0].uri", force: false, protected: []) }
        #expect(refused?.contains("t.json: properties.distribute[0].uri: expected no file at \(target), found one (14 bytes); pass --force") == true)
        #expect(message { () throws(KilnError) in try OutputDestination.check(target, field: "f", force: true, protected: []) } == nil)

        let link = directory + "/real/link.vhd"
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: target)
        #expect(message { () throws(KilnError) in try OutputDestination.check(link, field: "f", force: true, protected: []) }?.contains("found a symbolic link") == true)
        #expect(message { () throws(KilnError) in try OutputDestination.check(directory + "/real", field: "f", force: true, protected: []) }?.contains("directory or special file") == true)
    }

    @Test("a symbolic link among the parents is refused, also one that is created later on the way")
    func symlinkedParents() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.createSymbolicLink(atPath: directory + "/elsewhere", withDestinationPath: directory + "/real")
        let refused = message { () throws(KilnError) in try OutputDestination.check(directory + "/elsewhere/new/out.vhd", field: "f", force: false, protected: []) }
        #expect(refused?.contains("expected a path without symbolic links, found \(directory)/elsewhere → \(directory)/real") == true)
        // Directories that do not exist yet are fine (they are created), and `..` is applied lexically.
        #expect(message { () throws(KilnError) in try OutputDestination.check(directory + "/real/a/b/../out.vhd", field: "f", force: false, protected: []) } == nil)
    }

    @Test("nothing inside the state directory or the cache, named directly, through .. or through a link to it")
    func protectedDirectories() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let state = directory + "/state"
        for path in [state + "/kiln.sqlite", state + "/runs/x/disk.qcow2", directory + "/real/../state/images/a.vhd", state] {
            let refused = message { () throws(KilnError) in try OutputDestination.check(path, field: "f", force: true, protected: [state]) }
            #expect(refused?.contains("expected a path outside Kiln's state and cache directory \(state)") == true, "\(path)")
        }
        // The state directory named through a link: its real path is protected too.
        try FileManager.default.createSymbolicLink(atPath: directory + "/state-link", withDestinationPath: state)
        let refused = message { () throws(KilnError) in try OutputDestination.check(state + "/x.vhd", field: "f", force: true, protected: [directory + "/state-link"]) }
        #expect(refused != nil)
        #expect(message { () throws(KilnError) in try OutputDestination.check(directory + "/statement.vhd", field: "f", force: false, protected: [state]) } == nil)
    }

    @Test("no runOutputName's default file is the distribution's scratch file")
    func scratchName() {
        for name in [".image", "distribution", "distribution.vhd", "image", "..", "."] {
            #expect(Distribution.vhdDestination(nil, runOutputName: name, runDirectory: "/r") != "/r/" + Distribution.scratchName)
        }
        #expect(!Distribution.scratchName.hasSuffix(".vhd"))
    }

    @Test("placing without replacing refuses a file that appeared meanwhile and leaves it intact")
    func placeRefusesRace() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let artifact = directory + "/real/artifact"
        try Data("new".utf8).write(to: URL(fileURLWithPath: artifact))
        let target = directory + "/real/out.vhd"
        try Data("old".utf8).write(to: URL(fileURLWithPath: target))
        #expect(message { () throws(KilnError) in try Distribution.place(artifact, at: target, replacing: false) }?.contains("a file is already there") == true)
        #expect(FileManager.default.contents(atPath: target) == Data("old".utf8))
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory + "/real").sorted() == ["artifact", "out.vhd"])
        try Distribution.place(artifact, at: target, replacing: true)
        #expect(FileManager.default.contents(atPath: target) == Data("new".utf8))
    }
}
