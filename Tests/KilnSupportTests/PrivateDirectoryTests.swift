import Foundation
import Testing
@testable import KilnSupport

/// Private directories: made 0700, and nothing another user could have put in their place is used or followed.
@Suite("Private directories")
struct PrivateDirectoryTests {
    /// A scratch folder for one test, removed afterwards.
    struct Scratch {
        let path: String
        /// Short: a runtime directory below it must leave room for socket paths.
        init() throws {
            path = "/tmp/kiln-test-" + String(format: "%08x", UInt32.random(in: 0...UInt32.max))
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
        }
        func remove() { try? FileManager.default.removeItem(atPath: path) }
    }

    static func mode(_ path: String) -> mode_t {
        var info = stat()
        return lstat(path, &info) == 0 ? info.st_mode & 0o7777 : 0
    }

    @Test func makeCreatesMode0700AndAcceptsItAgain() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let directory = scratch.path + "/kiln-1000"
        try PrivateDirectory.make(directory)
        #expect(Self.mode(directory) == 0o700)
        try PrivateDirectory.make(directory)
    }

    @Test func makeRefusesASymbolicLinkAndLeavesItsTargetAlone() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let victim = scratch.path + "/victim"
        try FileManager.default.createDirectory(atPath: victim, withIntermediateDirectories: false)
        chmod(victim, 0o700)
        let link = scratch.path + "/kiln-1000"
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: victim)
        let error = #expect(throws: KilnError.self) { try PrivateDirectory.make(link) }
        #expect(error?.message.contains(link) == true)
        #expect(error?.message.contains("found a symbolic link") == true, "\(error?.message ?? "")")
        #expect(throws: KilnError.self) { try PrivateDirectory.makeFresh(link) }
        #expect(FileManager.default.fileExists(atPath: victim), "the link's target is neither used nor removed")
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: link)) == victim)
    }

    @Test func makeRefusesADirectoryOthersCanReach() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let directory = scratch.path + "/kiln-1000"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        chmod(directory, 0o777)
        let error = #expect(throws: KilnError.self) { try PrivateDirectory.make(directory) }
        #expect(error?.message.contains("found mode 0777") == true, "\(error?.message ?? "")")
        #expect(Self.mode(directory) == 0o777, "refused, not changed")
    }

    @Test func makeRefusesARegularFile() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let file = scratch.path + "/kiln-1000"
        #expect(FileManager.default.createFile(atPath: file, contents: Data("x".utf8)))
        let error = #expect(throws: KilnError.self) { try PrivateDirectory.make(file) }
        #expect(error?.message.contains("something other than a directory") == true)
    }

    @Test("a directory of another user's is refused (testable as root)", .enabled(if: getuid() == 0))
    func makeRefusesAnotherUsersDirectory() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let directory = scratch.path + "/kiln-1000"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        chmod(directory, 0o700)
        #expect(chown(directory, 65534, 65534) == 0)
        let error = #expect(throws: KilnError.self) { try PrivateDirectory.make(directory) }
        #expect(error?.message.contains("owned by uid 65534") == true, "\(error?.message ?? "")")
        #expect(throws: KilnError.self) { try PrivateDirectory.makeFresh(directory) }
        #expect(FileManager.default.fileExists(atPath: directory), "another user's directory is never removed")
    }

    @Test func makeFreshReplacesAStaleDirectoryOfOurs() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let root = scratch.path + "/libvirt-42"
        try FileManager.default.createDirectory(atPath: root + "/etc", withIntermediateDirectories: true)
        #expect(FileManager.default.createFile(atPath: root + "/etc/qemu.conf", contents: Data("stale".utf8)))
        // A link inside the stale root is removed, not followed.
        let outside = scratch.path + "/outside"
        #expect(FileManager.default.createFile(atPath: outside, contents: Data("keep".utf8)))
        try FileManager.default.createSymbolicLink(atPath: root + "/link", withDestinationPath: outside)
        try PrivateDirectory.makeFresh(root)
        #expect(try FileManager.default.contentsOfDirectory(atPath: root).isEmpty)
        #expect(Self.mode(root) == 0o700)
        #expect(FileManager.default.contents(atPath: outside) == Data("keep".utf8))
    }

    @Test func createPathMakesEveryNewDirectory0700AndLeavesExistingOnes() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        chmod(scratch.path, 0o755)
        let run = scratch.path + "/state/runs/0123abcd"
        try PrivateDirectory.createPath(run)
        for directory in [scratch.path + "/state", scratch.path + "/state/runs", run] {
            #expect(Self.mode(directory) == 0o700, "\(directory)")
        }
        #expect(Self.mode(scratch.path) == 0o755, "an existing parent is left as it is")
        try PrivateDirectory.createPath(run)
        #expect(FileManager.default.createFile(atPath: scratch.path + "/file", contents: nil))
        #expect(throws: KilnError.self) { try PrivateDirectory.createPath(scratch.path + "/file") }
    }

    @Test func aTemporaryDirectoryIsNewAndPrivate() throws {
        let first = try PrivateDirectory.makeTemporary(prefix: "kiln-bench-")
        let second = try PrivateDirectory.makeTemporary(prefix: "kiln-bench-")
        defer { for path in [first, second] { try? FileManager.default.removeItem(atPath: path) } }
        #expect(first != second)
        #expect(URL(fileURLWithPath: first).lastPathComponent.hasPrefix("kiln-bench-"))
        try PrivateDirectory.check(first)
        #expect(Self.mode(first) == 0o700)
    }

    @Test func theRuntimeDirectoryIsXDGsWhenItIsOursElseOneNamedForTheUser() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        #expect(RuntimeDirectory.path(environment: ["XDG_RUNTIME_DIR": scratch.path]) == scratch.path + "/kiln")
        #expect(RuntimeDirectory.path(environment: [:]) == "/tmp/kiln-\(getuid())")
        #expect(RuntimeDirectory.path(environment: ["XDG_RUNTIME_DIR": scratch.path + "/missing"]) == "/tmp/kiln-\(getuid())")
        let link = scratch.path + "/link"
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: scratch.path)
        #expect(RuntimeDirectory.path(environment: ["XDG_RUNTIME_DIR": link]) == "/tmp/kiln-\(getuid())", "a link is not ours to trust")
        let long = "/" + String(repeating: "r", count: RuntimeDirectory.maximumLength)
        #expect(RuntimeDirectory.path(environment: ["XDG_RUNTIME_DIR": long]) == "/tmp/kiln-\(getuid())")
        let made = try RuntimeDirectory.make(environment: ["XDG_RUNTIME_DIR": scratch.path])
        #expect(Self.mode(made) == 0o700)
    }
}
