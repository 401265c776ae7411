import Foundation
import KilnSupport

public enum Accelerator: String, Sendable, Codable, CaseIterable {
    case kvm
    case tcg
}

public enum AcceleratorChoice: String, Sendable, CaseIterable {
    case auto, kvm, tcg
}

/// The accelerator decision and why it was made.
public struct AcceleratorDecision: Sendable, Codable, Equatable {
    public var accelerator: Accelerator
    public var evidence: String
    public var bootID: String
    public var decidedAt: Date

    public init(accelerator: Accelerator, evidence: String, bootID: String, decidedAt: Date) {
        self.accelerator = accelerator
        self.evidence = evidence
        self.bootID = bootID
        self.decidedAt = decidedAt
    }
}

/// Decides between KVM and TCG by booting something: a /dev/kvm node proves nothing (on some hosts KVM guests
/// hang right after "Booting from ROM"). The probe boots the host's kernel under KVM with no root file system and
/// waits, with a deadline, for "Linux version" on the serial console. The answer is cached per host boot.
public enum AcceleratorProbe {
    public static let probeDeadline: Duration = .seconds(20)

    public static func decide(_ choice: AcceleratorChoice, cacheDirectory: String) async -> AcceleratorDecision {
        if let known = cached(choice, cacheDirectory: cacheDirectory) { return known }
        let decision = await probe(bootID: currentBootID())
        let cacheFile = cacheDirectory + "/accelerator.json"
        if let data = try? JSONEncoder().encode(decision) {
            try? FileManager.default.createDirectory(atPath: cacheDirectory, withIntermediateDirectories: true)
            _ = FileManager.default.createFile(atPath: cacheFile, contents: data)
        }
        return decision
    }

    /// The decision without a probe: the one given, or the answer cached for this host boot; nil when `decide`
    /// would probe.
    public static func cached(_ choice: AcceleratorChoice, cacheDirectory: String) -> AcceleratorDecision? {
        let bootID = currentBootID()
        switch choice {
        case .kvm: return AcceleratorDecision(accelerator: .kvm, evidence: "--accel kvm given", bootID: bootID, decidedAt: Date())
        case .tcg: return AcceleratorDecision(accelerator: .tcg, evidence: "--accel tcg given", bootID: bootID, decidedAt: Date())
        case .auto: break
        }
        guard let data = FileManager.default.contents(atPath: cacheDirectory + "/accelerator.json"),
              let cached = try? JSONDecoder().decode(AcceleratorDecision.self, from: data), cached.bootID == bootID else { return nil }
        return cached
    }

    static func currentBootID() -> String {
        (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? "unknown"
    }

    /// The newest kernel under /boot (libguestfs needs one there too).
    public static func hostKernel() -> String? {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/boot")) ?? []
        return names.filter { $0.hasPrefix("vmlinuz-") }.sorted().last.map { "/boot/" + $0 }
    }

    static func probe(bootID: String) async -> AcceleratorDecision {
        func tcg(_ why: String) -> AcceleratorDecision {
            AcceleratorDecision(accelerator: .tcg, evidence: why, bootID: bootID, decidedAt: Date())
        }
        guard FileManager.default.fileExists(atPath: "/dev/kvm") else { return tcg("/dev/kvm does not exist") }
        guard access("/dev/kvm", R_OK | W_OK) == 0 else { return tcg("/dev/kvm is not readable and writable by this user") }
        guard let kernel = hostKernel() else { return tcg("no kernel under /boot to probe KVM with (install linux-image-amd64)") }
        let console = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-kvm-probe-\(UUID().uuidString).log").path
        defer { try? FileManager.default.removeItem(atPath: console) }
        let clock = ContinuousClock()
        let start = clock.now
        let result = try? await Subprocess.run("qemu-system-x86_64", [
            "-machine", "pc,accel=kvm", "-cpu", "host", "-m", "256", "-smp", "1", "-display", "none", "-nodefaults",
            "-no-reboot", "-kernel", kernel, "-append", "console=ttyS0 panic=-1 loglevel=4",
            "-serial", "file:\(console)",
        ], timeout: probeDeadline)
        let elapsed = clock.now - start
        let output = (try? String(contentsOfFile: console, encoding: .utf8)) ?? ""
        if output.contains("Linux version") {
            return AcceleratorDecision(accelerator: .kvm, evidence: "a KVM guest booted \(kernel) and printed \"Linux version\" within \(DurationText.format(elapsed))",
                                       bootID: bootID, decidedAt: Date())
        }
        if let result, !result.succeeded, !result.stderrText.isEmpty {
            return tcg("QEMU could not start a KVM guest: \(result.stderrText.trimmingCharacters(in: .whitespacesAndNewlines).prefix(300))")
        }
        return tcg("/dev/kvm exists, but a KVM guest booting \(kernel) printed nothing on its serial console within \(DurationText.format(probeDeadline)): KVM guests hang on this host")
    }
}
