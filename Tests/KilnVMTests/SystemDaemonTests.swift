import Foundation
import KilnDigest
import KilnSupport
import KilnTestSupport
import Testing

/// `kiln build --connect qemu:///system`: a build on a system libvirtd, as on a lab host that already runs one. The
/// daemon is the lab host's (scripts/lab-host) with Debian's QEMU defaults, and Kiln runs inside its namespaces,
/// where `qemu:///system` is that daemon. Needs root (KILN_LAB_TESTS=1) and a VM (KILN_VM_TESTS=1).
@Suite("qemu:///system: builds on a system libvirtd (real VMs)", .serialized, .vmSlot,
       .enabled(if: VMTestEnvironment.enabled && LabHost.enabled))
struct SystemDaemonTests {
    @Test("a build runs on a system libvirtd as Debian installs it (QEMU as libvirt-qemu, disks relabelled, seccomp on): the VM is the daemon's, QEMU opens Kiln's private run files, a second build resumes from the first's checkpoints, a failing one with --on-error abort keeps the daemon's VM for kiln vm ssh until kiln vm stop, and the source keeps its owner and content")
    func buildAndResume() async throws {
        try await LabHost.with(qemu: "debian") { lab in
            let work = try BuildTests.Workspace()
            defer { try? FileManager.default.removeItem(atPath: work.state.path) }
            let image = try await VMTestEnvironment.catalog(work.state).resolve(reference: "Debian:debian-12:12")
            let sumBefore = try SHA256Digest.hex(ofFile: image.path)
            let ownerBefore = try FileManager.default.attributesOfItem(atPath: image.path)[.ownerAccountID] as? NSNumber
            let template = try work.template(#"[{"type": "Shell", "name": "mark", "inline": ["echo system-daemon | sudo tee /etc/kiln-system-daemon"]}]"#)
            let enter = try lab.enter
            func build() async throws -> (result: KilnExecutable.Result, runID: String) {
                let result = try await work.kiln(["build", template, "--json", "--connect", "qemu:///system"], through: enter)
                let final = work.events(result).last { $0["event"] as? String == "result" }
                #expect(final?["runState"] as? String == "Succeeded", "\(final ?? [:])\n\(result.stderr.suffix(3000))")
                work.expectNothingLeftBehind(final)
                let runID = try #require(final?["runID"] as? String)
                #expect(FileManager.default.fileExists(atPath: work.state.runsPath + "/\(runID)/debianVhd.vhd"))
                return (result, runID)
            }

            // 1. Fresh: the daemon starts QEMU (its own log of the command line, under the lab's /var/log/libvirt),
            //    with Debian's seccomp sandbox, on files in Kiln's 0700 run directory that libvirt-qemu cannot open.
            let fresh = try await build()
            let messages = work.events(fresh.result).compactMap { $0["message"] as? String }
            #expect(messages.contains { $0.hasPrefix("checkpoint ") && $0.contains("after boot") }, "\(messages)")
            let qemuLogs = try FileManager.default.contentsOfDirectory(atPath: lab.directory + "/log/qemu")
            let log = try #require(qemuLogs.first { $0.hasSuffix(".log") }.map { lab.directory + "/log/qemu/" + $0 })
            let commandLine = try String(contentsOfFile: log, encoding: .utf8)
            #expect(commandLine.contains("-sandbox on"), "\(commandLine.prefix(3000))")
            #expect(commandLine.contains(work.state.runsPath + "/\(fresh.runID)/") || commandLine.contains(work.state.cachePath), "\(commandLine.prefix(3000))")

            // 2. Again: resumed from the first build's checkpoint on the same daemon, no boot.
            let again = try await build()
            #expect(work.events(again.result).contains { ($0["message"] as? String ?? "").hasPrefix("resuming from checkpoint") }, "\(again.result.stdout.suffix(3000))")
            #expect(!work.events(again.result).contains { $0["event"] as? String == "phase" && $0["detail"] as? String == "boot" })

            // 3. A failing step with --on-error abort keeps the daemon's VM (resumed from the checkpoint after the
            //    first step): listed, reached with kiln vm ssh, and gone after kiln vm stop.
            let broken = try work.template(#"""
            [{"type": "Shell", "name": "mark", "inline": ["echo system-daemon | sudo tee /etc/kiln-system-daemon"]},
             {"type": "Shell", "name": "breaks", "inline": ["echo broken", "exit 4"]}]
            """#)
            let keeper = try KilnExecutable.start(["build", broken, "--json", "--connect", "qemu:///system", "--on-error", "abort", "--state-dir", work.state.path],
                                                  environment: ["KILN_CATALOG": VMTestEnvironment.repositoryRoot.appendingPathComponent("images/catalog.json").path],
                                                  outputPath: work.files + "/keeper.log", through: enter)
            let kept = try await work.awaitKeptVM(log: work.files + "/keeper.log")
            let keptRun = try #require(kept["runID"] as? String)
            #expect((kept["failure"] as? String ?? "").contains("exit status 4"), "\(kept)")
            let domains = try await Subprocess.run(enter[0], Array(enter.dropFirst()) + ["virsh", "-q", "list", "--name"], timeout: .seconds(30))
            #expect(domains.stdoutText.contains("kiln-"), "the kept VM is the daemon's: \(domains.stdoutText)")
            // Everything after -- is the guest's command line, so the state directory goes before it.
            let inside = try await KilnExecutable.run(["vm", "ssh", "--state-dir", work.state.path, keptRun, "--", "cat", "/etc/kiln-system-daemon"],
                                                      through: enter)
            #expect(inside.status == 0 && inside.stdout == "system-daemon\n", "\(inside.stdout)\(inside.stderr)")
            let stopped = try await work.kiln(["vm", "stop", keptRun], through: enter)
            #expect(stopped.status == 0, "\(stopped.stderr)")
            #expect(try await keeper.wait() == 1, "the kept run failed")
            let after = try await Subprocess.run(enter[0], Array(enter.dropFirst()) + ["virsh", "-q", "list", "--all", "--name"], timeout: .seconds(30))
            #expect(after.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "the kept VM is gone: \(after.stdoutText)")

            #expect(try SHA256Digest.hex(ofFile: image.path) == sumBefore)
            #expect(try FileManager.default.attributesOfItem(atPath: image.path)[.ownerAccountID] as? NSNumber == ownerBefore)
        }
    }
}
