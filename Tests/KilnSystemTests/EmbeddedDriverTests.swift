import Foundation
import Testing
import KilnSupport
@testable import KilnLibvirt

/// The embedded driver's roots: in the private runtime directory only, swept only there, short enough for sockets.
@Suite("Embedded libvirt roots")
struct EmbeddedDriverTests {
    /// Two pids no process has now.
    static func deadPIDs() throws -> (Int32, Int32) {
        var free: [Int32] = []
        for pid in stride(from: Int32(4_194_000), to: 3_000_000, by: -1) where free.count < 2 && kill(pid, 0) != 0 && errno == ESRCH {
            free.append(pid)
        }
        guard free.count == 2 else { throw KilnError(.internalError, "no free pid found") }
        return (free[0], free[1])
    }

    @Test func theSweepRemovesDeadRootsOfOursAndFollowsNoLink() throws {
        let runtime = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-sweep-\(UUID().uuidString)").path
        try PrivateDirectory.make(runtime)
        defer { try? FileManager.default.removeItem(atPath: runtime) }
        let (dead, deadToo) = try Self.deadPIDs()
        let stale = runtime + "/libvirt-\(dead)"
        try FileManager.default.createDirectory(atPath: stale + "/etc", withIntermediateDirectories: true)
        let alive = runtime + "/libvirt-1"
        try FileManager.default.createDirectory(atPath: alive, withIntermediateDirectories: false)
        // A link named like a dead root: neither it nor what it points at is removed.
        let victim = runtime + "/victim"
        try FileManager.default.createDirectory(atPath: victim, withIntermediateDirectories: false)
        try FileManager.default.createSymbolicLink(atPath: runtime + "/libvirt-\(deadToo)", withDestinationPath: victim)
        EmbeddedDriver.sweep(runtime: runtime)
        #expect(!FileManager.default.fileExists(atPath: stale))
        #expect(FileManager.default.fileExists(atPath: alive), "pid 1 runs")
        #expect(FileManager.default.fileExists(atPath: victim))
    }

    @Test func theDeepestSocketFitsForTheDefaultRootsAndALongRootIsRefused() throws {
        let longestRuntime = "/" + String(repeating: "r", count: RuntimeDirectory.maximumLength - 1)
        for runtime in ["/run/user/4294967294/kiln", "/tmp/kiln-4294967294", longestRuntime] {
            #expect(EmbeddedDriver.deepestSocketPath(root: runtime + "/libvirt-4194304").utf8.count <= 107)
        }
        #expect(EmbeddedDriver.deepestSocketPath(root: "/r").hasSuffix("/monitor.sock"))
        let long = "/" + String(repeating: "d", count: 60)
        let error = #expect(throws: KilnError.self) { try EmbeddedDriver.checkSocketRoom(root: long) }
        #expect(error?.message.contains("too long for UNIX socket paths") == true)
    }

    @Test func theProcessRootIsAFreshPrivateDirectoryInTheRuntimeDirectory() throws {
        let uri = try EmbeddedDriver.processURI()
        let root = String(uri.dropFirst("qemu:///embed?root=".count))
        #expect(root == RuntimeDirectory.path() + "/libvirt-\(getpid())")
        try PrivateDirectory.check(root)
        try PrivateDirectory.check(RuntimeDirectory.path())
        #expect(FileManager.default.fileExists(atPath: root + "/etc/qemu.conf"))
    }
}
