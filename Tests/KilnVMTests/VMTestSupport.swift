import Foundation
import KilnGuestfs
import KilnMachine
import KilnSupport
import Testing

/// VM tests boot the reference images for real. scripts/test builds the images and sets KILN_VM_TESTS=1;
/// `swift test` alone skips them.
enum VMTestEnvironment {
    static let enabled = ProcessInfo.processInfo.environment["KILN_VM_TESTS"] == "1"

    static let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// A fresh state directory for one test, removed afterwards by the caller.
    static func makeStateDirectory() -> StateDirectory {
        let path = "/tmp/kiln-vmtest-" + RunID.make()
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return StateDirectory(explicit: path)
    }

    static func catalog(_ state: StateDirectory) throws -> ImageCatalog {
        try ImageCatalog.locate(state: state, environment: ProcessInfo.processInfo.environment.merging(
            ["KILN_CATALOG": repositoryRoot.appendingPathComponent("images/catalog.json").path]) { _, new in new })
    }

    /// The accelerator the whole suite uses: probed once per host boot, cached outside the test's state.
    static func accelerator() async -> Accelerator {
        let cache = (ProcessInfo.processInfo.environment["HOME"] ?? "/root") + "/.cache/kiln"
        return await AcceleratorProbe.decide(.auto, cacheDirectory: cache).accelerator
    }

    /// QEMU processes whose command line names this domain.
    /// A VHD a build wrote, opened read-only with libguestfs (one appliance launch), its file systems mounted.
    static func openVHD(_ path: String) async throws -> GuestfsHandle {
        let handle = try GuestfsHandle()
        do {
            if await accelerator() == .tcg { try handle.setBackendSettings(["force_tcg"]) }
            try handle.setBackend("direct")
            try handle.addDrive(path, format: "vpc", readOnly: true)
            try handle.launch()
            let os = try #require(try handle.inspectOperatingSystems().first)
            try handle.mountAll(os, readOnly: true)
        } catch {
            handle.close()
            throw error
        }
        return handle
    }

    static func qemuProcesses(named domain: String) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { Int32($0) }.filter { pid in
            guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            let commandLine = String(decoding: data, as: UTF8.self)
            return commandLine.contains("qemu-system") && commandLine.contains(domain)
        }
    }
}

/// Collects progress events for assertions and failure messages.
final class EventLog: @unchecked Sendable {
    private let lines = Locked<[String]>([])
    func callAsFunction(_ line: String) { lines.withLock { $0.append(line) } }
    var all: [String] { lines.current }
}
