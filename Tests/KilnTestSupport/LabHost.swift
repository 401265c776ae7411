import Foundation
import KilnSupport
import Testing

/// A second libvirt host made by `scripts/lab-host` (a real libvirtd and sshd in their own network and mount
/// namespaces), for the lab tests. They need root and run only with KILN_LAB_TESTS=1 (README, "Tests").
public struct LabHost: Sendable {
    public let directory: String
    /// `qemu+ssh://root@ADDRESS/system?keyfile=…&command=…`, checking the host key against the lab's own file.
    public let uri: String
    /// The lab host's address on its veth (10.203.N.2).
    public let address: String
    /// The storage pool directory on the lab host: a tmpfs there, an empty directory here.
    public var poolDirectory: String { directory + "/pool" }

    public static var enabled: Bool { ProcessInfo.processInfo.environment["KILN_LAB_TESTS"] == "1" }

    /// The lab host of the suite running (see `Trait.labHost`).
    @TaskLocal public static var current: LabHost?

    static var script: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("scripts/lab-host").path
    }

    /// Network numbers this process has taken; another process's lab hosts show as namespaces.
    private static let taken = Locked<Set<Int>>([])

    /// The command prefix that runs a program on the lab host itself (`nsenter` into its mount, network and UTS
    /// namespaces, as the lab's libvirtd): there `qemu:///system` is the lab's libvirtd, and 127.0.0.1 its loopback.
    public var enter: [String] {
        get throws {
            let pids = try String(contentsOfFile: directory + "/daemons.pid", encoding: .utf8)
            guard let daemon = pids.split(separator: " ").first.map({ $0.trimmingCharacters(in: .whitespacesAndNewlines) }), !daemon.isEmpty else {
                throw KilnError(.invalidState, "the lab host \(directory) names no daemon")
            }
            return ["/usr/bin/nsenter", "--target", daemon, "--mount", "--net", "--uts", "--"]
        }
    }

    /// `poolSize`: the pool tmpfs's size limit (tmpfs's `size=`), default 4g. `qemu`: "debian" for Debian's QEMU
    /// defaults (as user libvirt-qemu, disks relabelled, the seccomp sandbox on) instead of QEMU as root.
    public static func start(poolSize: String? = nil, qemu: String? = nil) async throws -> LabHost {
        let net = try taken.withLock { taken -> Int in
            guard let free = (0...254).first(where: { !taken.contains($0) && !FileManager.default.fileExists(atPath: "/run/netns/kiln-lab\($0)") }) else {
                throw KilnError(.invalidState, "no free lab network number")
            }
            taken.insert(free)
            return free
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-lab-\(UUID().uuidString.prefix(8))").path
        var environment = ["KILN_LAB_NET": String(net)]
        if let poolSize { environment["KILN_LAB_POOL_SIZE"] = poolSize }
        if let qemu { environment["KILN_LAB_QEMU"] = qemu }
        let result = try await Subprocess.run(script, ["start", directory], timeout: .seconds(90), environment: environment)
        guard result.succeeded else {
            _ = try? await Subprocess.run(script, ["stop", directory], timeout: .seconds(30))
            try? FileManager.default.removeItem(atPath: directory)
            taken.withLock { _ = $0.remove(net) }
            throw KilnError(.external, "scripts/lab-host start failed (\(result.status)): \(result.stderrText)")
        }
        return LabHost(directory: directory, uri: result.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines),
                       address: "10.203.\(net).2")
    }

    public func stop() async throws {
        let result = try await Subprocess.run(Self.script, ["stop", directory], timeout: .seconds(30))
        guard result.succeeded else { throw KilnError(.external, "scripts/lab-host stop failed (\(result.status)): \(result.stderrText)") }
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Runs `body` with a lab host started for it and stopped afterwards, whatever `body` did.
    public static func with(poolSize: String? = nil, qemu: String? = nil, _ body: (LabHost) async throws -> Void) async throws {
        let host = try await start(poolSize: poolSize, qemu: qemu)
        do {
            try await $current.withValue(host) { try await body(host) }
        } catch {
            try? await host.stop()
            throw error
        }
        try await host.stop()
    }
}

/// Starts a lab host before the suite's tests and stops it after them; the tests find it in `LabHost.current`.
public struct LabHostTrait: SuiteTrait, TestScoping {
    var poolSize: String?

    public func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        try await LabHost.with(poolSize: poolSize) { _ in try await function() }
    }
}

extension Trait where Self == LabHostTrait {
    /// A lab host for the suite (KILN_LAB_TESTS=1 only: combine with `.enabled(if: LabHost.enabled)`).
    public static var labHost: Self { LabHostTrait() }

    /// A lab host whose pool tmpfs may grow to `poolSize` (`16g`).
    public static func labHost(poolSize: String) -> Self { LabHostTrait(poolSize: poolSize) }
}
