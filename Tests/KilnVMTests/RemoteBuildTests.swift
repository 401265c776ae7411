import Foundation
import KilnDigest
import KilnSupport
import KilnTestSupport
import Testing

/// `kiln build --connect qemu+ssh://…`: the VM on a second libvirt host (scripts/lab-host: its own network namespace
/// and address, its own sshd, its pool on a file system only it sees), Kiln and its state on this machine. Needs root
/// (KILN_LAB_TESTS=1) and a VM (KILN_VM_TESTS=1).
@Suite("qemu+ssh://: builds on a second libvirt host (real VMs)", .serialized, .vmSlot,
       .enabled(if: VMTestEnvironment.enabled && LabHost.enabled))
struct RemoteBuildTests {
    /// Runs `command` on the lab host (in its namespaces, where qemu:///system is its daemon).
    static func onHost(_ lab: LabHost, _ command: String) async throws -> String {
        let enter = try lab.enter
        let result = try await Subprocess.run(enter[0], Array(enter.dropFirst()) + ["/bin/sh", "-c", command], timeout: .seconds(60))
        #expect(result.succeeded, "\(command): \(result.stderrText)")
        return result.stdoutText
    }

    @Test("""
    a build through qemu+ssh:// runs its VM on the second host: the source is uploaded once into the host's pool \
    and found by its sha256 afterwards, the disks and checkpoints are volumes there, the guest is reached through \
    SSH, the VHD is made here from the layers and overlay that come back; a second build resumes there from the \
    last checkpoint; a failing build moves off a host that cannot start it and leaves no domain and no volume of its \
    own there; pruning the cache here removes the checkpoints' volumes there
    """)
    func buildOnASecondHost() async throws {
        try await LabHost.with(poolSize: "6g") { lab in
            let work = try BuildTests.Workspace()
            defer { try? FileManager.default.removeItem(atPath: work.state.path) }
            let poolPath = lab.poolDirectory + "/kiln"
            _ = try await Self.onHost(lab, "virsh -q pool-define-as kiln dir --target \(poolPath) && virsh -q pool-build kiln && virsh -q pool-start kiln")
            let image = try await VMTestEnvironment.catalog(work.state).resolve(reference: "Debian:debian-12:12")
            let sumBefore = try SHA256Digest.hex(ofFile: image.path)
            let remote = ["--connect", lab.uri, "--pool", "kiln", "--accel", "tcg"]

            // 1. A build with a Shell and a File step: everything but the controller's state happens on the host.
            let payload = try work.write("payload.txt", "carried to the second host\n")
            let template = try work.template("""
            [{"type": "Shell", "name": "mark", "inline": ["hostname | sudo tee /etc/kiln-remote-guest", "echo remote | sudo tee -a /etc/kiln-remote-guest"]},
             {"type": "File", "name": "payload", "sourceUri": "file://\(payload)", "destination": "/tmp/payload.txt"},
             {"type": "Shell", "name": "keep", "inline": ["sudo mv /tmp/payload.txt /etc/kiln-remote-payload"]}]
            """)
            let built = try await work.build(template, remote)
            let events = work.events(built)
            let final = events.last { $0["event"] as? String == "result" }
            #expect(final?["runState"] as? String == "Succeeded", "\(final ?? [:])\n\(built.stderr.suffix(3000))")
            #expect(final?["host"] as? String == lab.address)
            work.expectNothingLeftBehind(final)
            let messages = events.compactMap { $0["message"] as? String }
            #expect(messages.contains { $0.hasPrefix("uploaded the source to \(lab.address) as kiln-source-\(sumBefore).qcow2") }, "\(messages)")
            #expect(messages.contains { $0.contains("through ssh root@\(lab.address)") }, "\(messages)")
            #expect(messages.contains { $0.hasPrefix("fetched the build's overlay from the host") }, "\(messages)")
            #expect(messages.filter { $0.hasPrefix("checkpoint ") }.count == 4, "after boot and each step: \(messages)")
            #expect(messages.contains { $0.contains("through 4 checkpoint layer(s) (4 fetched, 0 already here)") }, "\(messages)")
            let runID = try #require(final?["runID"] as? String)
            let vhd = work.state.runsPath + "/\(runID)/debianVhd.vhd"
            let handle = try await VMTestEnvironment.openVHD(vhd)
            defer { handle.close() }
            #expect(String(decoding: try handle.readFile("/etc/kiln-remote-guest"), as: UTF8.self) == "kiln-\(runID)\nremote\n")
            #expect(String(decoding: try handle.readFile("/etc/kiln-remote-payload"), as: UTF8.self) == "carried to the second host\n")
            #expect(try !handle.exists("/home/packer"), "deprovisioned as on the embedded driver")
            // The run's files on this machine: no overlay, key or seed left; on the host: the source and its marker,
            // and the four checkpoints' memory images and disk layers (named after their folders here).
            let sourceFiles = ["kiln-source-\(sumBefore).complete", "kiln-source-\(sumBefore).qcow2"]
            let left = try await Self.onHost(lab, "ls \(poolPath)").split(separator: "\n").map(String.init).sorted()
            #expect(left.filter { !$0.hasPrefix("kiln-ckpt-") } == sourceFiles, "\(left)")
            #expect(left.filter { $0.hasPrefix("kiln-ckpt-") && $0.hasSuffix(".memory") }.count == 4, "\(left)")
            #expect(left.filter { $0.hasPrefix("kiln-ckpt-") && $0.hasSuffix(".qcow2") }.count == 4, "\(left)")
            #expect(!FileManager.default.fileExists(atPath: poolPath + "/kiln-source-\(sumBefore).qcow2"), "the pool is the host's alone")

            // 1b. The same template again: the guest resumes on the host from the checkpoint after the last step
            //     (its memory image there, this run's overlay on its layer), every step is reused, and the disk comes
            //     back as this run's overlay alone on the layers the first build fetched.
            let again = try await work.build(template, remote)
            let againEvents = work.events(again)
            let againFinal = againEvents.last { $0["event"] as? String == "result" }
            #expect(againFinal?["runState"] as? String == "Succeeded", "\(againFinal ?? [:])\n\(again.stderr.suffix(3000))")
            work.expectNothingLeftBehind(againFinal)
            let againMessages = againEvents.compactMap { $0["message"] as? String }
            #expect(againMessages.contains { $0.hasPrefix("resuming from checkpoint") && $0.contains("after customize[2] keep") }, "\(againMessages)")
            #expect(againMessages.contains { $0.hasPrefix("resumed kiln-\(runID) on \(lab.address) from \(poolPath)/kiln-ckpt-") }, "\(againMessages)")
            #expect(againEvents.filter { $0["event"] as? String == "customizerEnd" && $0["outcome"] as? String == "reused" }.count == 3)
            #expect(againMessages.contains { $0.contains("through 4 checkpoint layer(s) (0 fetched, 4 already here)") }, "\(againMessages)")
            let againRunID = try #require(againFinal?["runID"] as? String)
            let againVHD = try await VMTestEnvironment.openVHD(work.state.runsPath + "/\(againRunID)/debianVhd.vhd")
            defer { againVHD.close() }
            #expect(String(decoding: try againVHD.readFile("/etc/kiln-remote-payload"), as: UTF8.self) == "carried to the second host\n")
            #expect(try !againVHD.exists("/home/packer"))
            let leftAgain = try await Self.onHost(lab, "ls \(poolPath)").split(separator: "\n").map(String.init).sorted()
            #expect(leftAgain == left, "the resumed build took no new checkpoint and left nothing of its own: \(leftAgain)")

            // 2. A build that fails in its step, given three hosts: one nobody answers at (the next address on the
            //    lab's veth) is skipped with a notice; a second lab host whose pool is too small for the source is
            //    chosen first (no Kiln build runs there, while a paused placeholder `kiln-…` domain runs on the first
            //    lab host) and cannot start the build, which goes on to the first lab host. There the source is found
            //    by its sha256 (no upload), and the failure takes the domain and the build's volumes with it.
            try await LabHost.with(poolSize: "64m") { small in
                let smallPool = small.poolDirectory + "/kiln"
                _ = try await Self.onHost(small, "virsh -q pool-define-as kiln dir --target \(smallPool) && virsh -q pool-build kiln && virsh -q pool-start kiln")
                _ = try await Self.onHost(lab, """
                    printf '%s' "<domain type='qemu'><name>kiln-placeholder</name><memory unit='MiB'>32</memory><os><type arch='x86_64'>hvm</type></os></domain>" > /tmp/placeholder.xml && virsh -q create /tmp/placeholder.xml --paused
                    """)
                let nobody = lab.uri.replacingOccurrences(of: "@\(lab.address)/", with: "@\(lab.address.dropLast())3/")
                let failing = try work.template(#"[{"type": "Shell", "name": "fails", "inline": ["echo about to fail", "exit 3"]}]"#)
                let failed = try await work.build(failing, ["--connect", nobody, "--connect", small.uri] + remote)
                #expect(failed.stderr.contains("kiln: host \(lab.address.dropLast())3 skipped: "), "\(failed.stderr.prefix(2000))")
                #expect(failed.stderr.contains("kiln: host \(small.address) chosen: 0 Kiln build(s) running there"), "\(failed.stderr.prefix(2000))")
                let moved = work.events(failed).compactMap { $0["message"] as? String }.first { $0.hasPrefix("host \(small.address) could not start the build") }
                #expect(moved?.contains("the storage pool kiln on \(small.address) has") == true, "\(failed.stderr.prefix(3000))")
                #expect(moved?.hasSuffix("trying host \(lab.address)") == true, "\(moved ?? "")")
                let smallLeft = try await Self.onHost(small, "ls -A \(smallPool)").trimmingCharacters(in: .whitespacesAndNewlines)
                #expect(smallLeft.isEmpty, "nothing of the build stays on the host that could not start it: \(smallLeft)")
                let smallDomains = try await Self.onHost(small, "virsh -q list --all --name").trimmingCharacters(in: .whitespacesAndNewlines)
                #expect(smallDomains.isEmpty, "\(smallDomains)")
                _ = try await Self.onHost(lab, "virsh -q destroy kiln-placeholder")
                let failedEvents = work.events(failed)
                let failedFinal = failedEvents.last { $0["event"] as? String == "result" }
                #expect(failedFinal?["runState"] as? String == "Failed", "\(failedFinal ?? [:])")
                #expect(failedFinal?["host"] as? String == lab.address, "the run names the host it ran on")
                work.expectNothingLeftBehind(failedFinal)
                let failedMessages = failedEvents.compactMap { $0["message"] as? String }
                #expect(failedMessages.contains { $0 == "source volume kiln-source-\(sumBefore).qcow2 is on \(lab.address) already" }, "\(failedMessages)")
                #expect(!failedMessages.contains { $0.hasPrefix("uploaded the source") })
                #expect(failedMessages.contains { $0.hasSuffix("… (remembered: the file is unchanged since it was read)") },
                        "the source's sha256 is not read again: \(failedMessages)")
                let domains = try await Self.onHost(lab, "virsh -q list --all --name").trimmingCharacters(in: .whitespacesAndNewlines)
                #expect(domains.isEmpty, "\(domains)")
                let after = try await Self.onHost(lab, "ls \(poolPath)").split(separator: "\n").map(String.init).sorted()
                #expect(after == left, "\(after)")
            }

            // 3. Pruning the cache here removes the checkpoints' volumes there.
            let pruned = try await work.kiln(["cache", "prune", "--all"])
            #expect(pruned.status == 0, "\(pruned.stderr)")
            #expect(pruned.stdout.contains("(and its volumes in pool kiln of \(lab.uri))"), "\(pruned.stdout)")
            let afterPrune = try await Self.onHost(lab, "ls \(poolPath)").split(separator: "\n").map(String.init).sorted()
            #expect(afterPrune == sourceFiles, "\(afterPrune)")
            #expect(try SHA256Digest.hex(ofFile: image.path) == sumBefore)
        }
    }

    @Test("""
    kiln template run A B --no-wait given two hosts puts one build on each (the first counts for its host as soon as \
    it is placed, before its VM runs), and kiln template cancel ends each build on its own host, leaving no domain \
    and no volume of the runs there
    """)
    func batchSpreadAndCancel() async throws {
        try await LabHost.with(poolSize: "6g") { first in
            try await LabHost.with(poolSize: "6g") { second in
                let work = try BuildTests.Workspace()
                defer { try? FileManager.default.removeItem(atPath: work.state.path) }
                let labs = [first, second]
                for lab in labs {
                    let pool = lab.poolDirectory + "/kiln"
                    _ = try await Self.onHost(lab, "virsh -q pool-define-as kiln dir --target \(pool) && virsh -q pool-build kiln && virsh -q pool-start kiln")
                }
                let template = try work.template(#"[{"type": "Shell", "name": "long", "inline": ["echo long-step-started", "sleep 900"]}]"#)

                // A build this controller placed on the first host counts there before any VM runs (this test
                // process stands for it): a build choosing now takes the second.
                try FileManager.default.createDirectory(atPath: work.state.path + "/placements", withIntermediateDirectories: true)
                try #"{"uri": "\#(first.uri)", "process": "\#(ProcessIdentity.current.description)"}"#
                    .write(toFile: work.state.path + "/placements/standin.json", atomically: true, encoding: .utf8)
                let planned = try await work.kiln(["build", template, "--plan", "--connect", first.uri, "--connect", second.uri, "--pool", "kiln", "--accel", "tcg"])
                #expect(planned.status == 0, "\(planned.stderr)")
                #expect(planned.stderr.contains("kiln: host \(second.address) chosen: 0 Kiln build(s) running there"), "\(planned.stderr)")
                #expect(planned.stderr.contains("then \(first.address) with 1 build(s), "), "\(planned.stderr)")
                #expect(HostPlacementsProbe.live(work.state.path) == ["standin.json"], "a printed plan takes no host")
                try FileManager.default.removeItem(atPath: work.state.path + "/placements/standin.json")

                for name in ["alpha", "beta"] {
                    let created = try await work.kiln(["template", "create", name, template])
                    #expect(created.status == 0, "\(created.stderr)")
                }
                let started = try await work.kiln(["template", "run", "alpha", "beta", "--no-wait", "--connect", first.uri, "--connect", second.uri,
                                                   "--pool", "kiln", "--accel", "tcg"])
                #expect(started.status == 0, "\(started.stderr)")
                // "started run ID of template NAME in the background (pid N)"
                var runs: [String: String] = [:]
                for line in started.stdout.split(separator: "\n") where line.hasPrefix("started run ") {
                    let words = line.split(separator: " ")
                    if words.count > 5 { runs[String(words[5])] = String(words[2]) }
                }
                let alpha = try #require(runs["alpha"], "\(started.stdout)"), beta = try #require(runs["beta"], "\(started.stdout)")

                // Each build's domain comes up on a host of its own (bounded wait: the source goes to both hosts first).
                let clock = ContinuousClock()
                let waitStart = clock.now
                var placed: [String: LabHost] = [:]
                while placed.count < 2 && clock.now - waitStart < .seconds(300) {
                    for lab in labs {
                        let names = try await Self.onHost(lab, "virsh -q list --name").split(separator: "\n").map { String($0).trimmingCharacters(in: .whitespaces) }
                        for run in [alpha, beta] where names.contains("kiln-\(run)") { placed[run] = lab }
                    }
                    if placed.count < 2 { try await Task.sleep(for: .seconds(2)) }
                }
                #expect(placed.count == 2, "both domains running: \(placed.mapValues(\.address))")
                #expect(placed[alpha]?.address != placed[beta]?.address, "one build on each host: \(placed.mapValues(\.address))")

                for (name, run) in [("alpha", alpha), ("beta", beta)] {
                    let cancel = try await work.kiln(["template", "cancel", name])
                    #expect(cancel.status == 0, "\(cancel.stdout)\(cancel.stderr)")
                    let show = try await work.kiln(["template", "show", name])
                    #expect(show.stdout.contains("lastRunStatus: Canceled"), "\(show.stdout)")
                    if let lab = placed[run] {
                        #expect(show.stdout.contains("host:        \(lab.address) (the build VM ran there)"), "\(show.stdout)")
                    }
                }
                for lab in labs {
                    let domains = try await Self.onHost(lab, "virsh -q list --all --name").trimmingCharacters(in: .whitespacesAndNewlines)
                    #expect(domains.isEmpty, "\(lab.address): \(domains)")
                    let files = try await Self.onHost(lab, "ls \(lab.poolDirectory)/kiln").split(separator: "\n").map(String.init)
                    #expect(files.allSatisfy { $0.hasPrefix("kiln-source-") || $0.hasPrefix("kiln-ckpt-") }, "\(lab.address): \(files)")
                    // The boot checkpoints stay in the cache (named after their folders, which name the runs); nothing else.
                    #expect(!files.contains { !$0.hasPrefix("kiln-ckpt-") && ($0.contains(alpha) || $0.contains(beta)) }, "\(lab.address): \(files)")
                }
                #expect(HostPlacementsProbe.live(work.state.path).isEmpty, "the ended builds no longer count for their hosts")
            }
        }
    }
}

/// The controller's placements (KilnMachine's HostPlacements), read as files.
enum HostPlacementsProbe {
    static func live(_ state: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: state + "/placements")) ?? []).filter { $0.hasSuffix(".json") }
    }
}
