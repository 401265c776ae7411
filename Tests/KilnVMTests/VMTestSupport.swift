import Foundation
import KilnGuestfs
import KilnMachine
import KilnSupport
import KilnTestSupport
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

    /// A VHD a build wrote, opened read-only with libguestfs (one appliance launch), its file systems mounted.
    static func openVHD(_ path: String) async throws -> GuestfsHandle {
        let tcg = await accelerator() == .tcg
        // On a thread of its own: the launch takes ~25 s.
        let opened = try await OwnThread.run {
            let handle = try GuestfsHandle()
            do {
                if tcg { try handle.setBackendSettings(["force_tcg"]) }
                try handle.setBackend("direct")
                try handle.addDrive(path, format: "vpc", readOnly: true)
                try handle.launch()
                let os = try #require(try handle.inspectOperatingSystems().first)
                try handle.mountAll(os, readOnly: true)
            } catch {
                handle.close()
                throw error
            }
            return UncheckedBox(value: handle)
        }
        return opened.value
    }

    /// Carries a value that is not Sendable from the thread that made it to the test that uses it.
    struct UncheckedBox<Value>: @unchecked Sendable { var value: Value }

    /// QEMU processes whose command line names this domain.
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

/// The VM suites run side by side (each suite in order), but never more VM tests at once than the host has cores
/// (at least two): a TCG guest keeps a core busy, and a third guest on two cores would slow the others past their
/// boot and login deadlines. Whichever suite asks next gets the freed core, so the suites finish together.
struct VMSlot: TestTrait, SuiteTrait, TestScoping {
    static let slots = AsyncSemaphore(count: max(2, ProcessInfo.processInfo.activeProcessorCount))

    var isRecursive: Bool { true }

    func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        // The suite itself and a parameterized test as a whole take no slot; each test case does.
        guard !test.isSuite, testCase != nil else { return try await function() }
        await Self.slots.wait()
        do {
            try await function()
        } catch {
            await Self.slots.signal()
            throw error
        }
        await Self.slots.signal()
    }
}

extension Trait where Self == VMSlot {
    /// Takes one of the VM slots for each test of the suite (`VMSlot`).
    static var vmSlot: VMSlot { VMSlot() }
}

/// A counting semaphore for async code: waiters are resumed in the order they came.
actor AsyncSemaphore {
    private var available: Int
    private var waiters: [CheckedContinuation<Void, Never>] = []

    init(count: Int) { available = count }

    func wait() async {
        if available > 0 {
            available -= 1
            return
        }
        await withCheckedContinuation { waiters.append($0) }
    }

    func signal() {
        if waiters.isEmpty {
            available += 1
        } else {
            waiters.removeFirst().resume()
        }
    }
}
