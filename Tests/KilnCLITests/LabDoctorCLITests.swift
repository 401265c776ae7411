import Foundation
import KilnSupport
import KilnTestSupport
import Testing

/// `kiln doctor --connect` against a second libvirt host (scripts/lab-host) through `qemu+ssh://`.
@Suite("Lab host: kiln doctor --connect", .serialized, .enabled(if: LabHost.enabled), .labHost(poolSize: "16g"))
struct LabDoctorCLITests {
    var lab: LabHost {
        get throws { try #require(LabHost.current) }
    }

    func doctor(_ arguments: [String]) async throws -> KilnExecutable.Result {
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-doctor-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: state) }
        return try await KilnExecutable.run(["doctor", "--skip-guestfs", "--accel", "tcg", "--state-dir", state] + arguments)
    }

    @Test("the host's QEMU, free memory and pool space come from the lab host; a missing pool is a failure with the commands that make it")
    func remoteHost() async throws {
        let lab = try lab
        let missing = try await doctor(["--connect", lab.uri, "--pool", "kiln"])
        #expect(missing.status == 1)
        #expect(missing.stdout.contains("[ok  ] libvirt connection: \(lab.uri) opens"), "\(missing.stdout)")
        #expect(missing.stdout.contains("[FAIL] pool kiln:"), "\(missing.stdout)")
        #expect(missing.stdout.contains("fix: virsh -c '\(lab.uri)' pool-define-as 'kiln' dir"), "\(missing.stdout)")

        try await Subprocess.check("virsh", ["-c", lab.uri, "pool-define-as", "kiln", "dir", "--target", lab.poolDirectory])
        try await Subprocess.check("virsh", ["-c", lab.uri, "pool-start", "kiln"])
        let result = try await doctor(["--connect", lab.uri])
        let qemu = try await Subprocess.check("qemu-system-x86_64", ["--version"]).stdoutText
        let qemuVersion = try #require(qemu.split(separator: " ").drop { $0 != "version" }.dropFirst().first)
        // scripts/lab-host names the lab host after its namespace; this machine keeps its own name.
        #expect(result.stdout.contains("[ok  ] host: kiln-lab\(lab.address.split(separator: ".")[2]): libvirt "), "\(result.stdout)")
        #expect(result.stdout.contains("QEMU \(qemuVersion)"), "\(result.stdout)")
        #expect(result.stdout.contains("[ok  ] host memory: "), "\(result.stdout)")
        // The pool is the lab host's tmpfs, made with a 16 GiB limit; this machine sees an empty folder there.
        #expect(result.stdout.contains("[ok  ] pool kiln: ") && result.stdout.contains("GiB free of 16.0 GiB"), "\(result.stdout)")
        #expect(result.stdout.contains("accelerator (this machine):"), "\(result.stdout)")
        // The lab host's libvirt answers for its own QEMU (this machine's /dev/kvm is shared with it, so either).
        #expect(result.stdout.contains("[ok  ] host accelerator: kvm: its libvirt offers") || result.stdout.contains("[ok  ] host accelerator: tcg: its libvirt offers no"), "\(result.stdout)")
    }

    @Test("a host nobody answers at is a failed connection, not a hang")
    func unreachableHost() async throws {
        let lab = try lab
        // The next address on the lab's veth: no host has it.
        let nobody = lab.uri.replacingOccurrences(of: "@\(lab.address)/", with: "@\(lab.address.dropLast())3/")
        let clock = ContinuousClock()
        let start = clock.now
        let result = try await doctor(["--connect", nobody])
        #expect(result.status == 1)
        #expect(result.stdout.contains("[FAIL] libvirt connection: cannot open libvirt connection"), "\(result.stdout)")
        #expect(clock.now - start < .seconds(30))
    }
}
