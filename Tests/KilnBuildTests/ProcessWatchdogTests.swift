import Foundation
import KilnSupport
import KilnTestSupport
import Testing

@Suite("The watchdog that outlives a killed Kiln")
struct ProcessWatchdogTests {
    @Test("when its pipe closes, processes naming a watched directory die and marked files go; others stay")
    func actsOnEndOfFile() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-watchdog-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory + "/run", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: directory + "/run-2", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: directory + "/checkpoint-open", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: directory + "/checkpoint-done", withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: directory + "/checkpoint-done/meta.json", contents: Data())
        FileManager.default.createFile(atPath: directory + "/out.vhd.partial", contents: Data("half".utf8))
        defer { try? FileManager.default.removeItem(atPath: directory) }

        // Stand-ins for QEMU (names a file in the run directory) and for another run's process (a name that
        // starts like the watched one: run-2).
        let guest = try StandInProcess(naming: directory + "/run/disk.qcow2")
        let other = try StandInProcess(naming: directory + "/run-2/disk.qcow2")

        let watchdog = try ProcessWatchdog()
        watchdog.killProcesses(naming: directory + "/run")
        watchdog.removeOnDeath(directory + "/out.vhd.partial")
        watchdog.removeOnDeath(directory + "/checkpoint-open", unlessItHolds: "meta.json")
        watchdog.removeOnDeath(directory + "/checkpoint-done", unlessItHolds: "meta.json")
        try await Task.sleep(for: .milliseconds(300))
        #expect(guest.isAlive, "nothing happens while the pipe is open")

        watchdog.trigger()
        let start = ContinuousClock.now
        while guest.isAlive && ContinuousClock.now - start < .seconds(10) {
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(!guest.isAlive, "the process naming the run directory is killed")
        // The files go after the kills.
        while FileManager.default.fileExists(atPath: directory + "/checkpoint-open") && ContinuousClock.now - start < .seconds(10) {
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(other.isAlive, "another run's process is left alone")
        #expect(!FileManager.default.fileExists(atPath: directory + "/out.vhd.partial"))
        #expect(!FileManager.default.fileExists(atPath: directory + "/checkpoint-open"))
        #expect(FileManager.default.fileExists(atPath: directory + "/checkpoint-done/meta.json"), "a completed checkpoint stays")
        while kill(watchdog.pid, 0) == 0 && ContinuousClock.now - start < .seconds(10) {
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(kill(watchdog.pid, 0) != 0, "the watchdog ends and is reaped")
    }

    @Test("a directory forgotten after a normal end is not swept: a process opening a run's output after Kiln exits lives on")
    func forgottenDirectoryIsLeftAlone() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-watchdog-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory + "/run", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: directory + "/other", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let watchdog = try ProcessWatchdog()
        watchdog.killProcesses(naming: directory + "/other")
        watchdog.killProcesses(naming: directory + "/run")
        watchdog.forgetProcesses(naming: directory + "/run")
        // What a user (or a test) starts on the finished run's output, and a process of a run still watched.
        let reader = try StandInProcess(naming: directory + "/run/out.vhd")
        let watched = try StandInProcess(naming: directory + "/other/disk.qcow2")
        watchdog.trigger()
        let start = ContinuousClock.now
        while kill(watchdog.pid, 0) == 0 && ContinuousClock.now - start < .seconds(10) {
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(kill(watchdog.pid, 0) != 0, "the watchdog has acted and ended")
        #expect(!watched.isAlive, "a directory still watched is swept")
        #expect(reader.isAlive, "the forgotten run directory is not")
    }

    @Test("the watchdog is in its own session, so a terminal's SIGHUP or Ctrl-C to Kiln's group does not reach it")
    func ownSession() throws {
        let watchdog = try ProcessWatchdog()
        defer { watchdog.trigger() }
        #expect(getsid(watchdog.pid) == watchdog.pid)
        #expect(getsid(watchdog.pid) != getsid(0))
    }
}
