import Foundation
import KilnDigest
import KilnGuestfs
import KilnSupport
import KilnTestSupport
import Testing

/// `kiln build` for real: one rich end-to-end build, then failures that must leave nothing behind.
@Suite("kiln build (real VMs)", .serialized, .vmSlot, .enabled(if: VMTestEnvironment.enabled))
struct BuildTests {
    struct Workspace {
        let state: StateDirectory
        let files: String

        init() throws {
            state = VMTestEnvironment.makeStateDirectory()
            files = state.path + "/files"
            try FileManager.default.createDirectory(atPath: files, withIntermediateDirectories: true)
        }

        func write(_ name: String, _ text: String) throws -> String {
            let path = files + "/" + name
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }

        static let debianSource = #"{"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12", "version": "latest"}"#
        static let vhdOnly = #"[{"type": "VHD", "runOutputName": "debianVhd"}]"#

        func template(_ customize: String, timeout: Int = 60, source: String = debianSource, distribute: String = vhdOnly) throws -> String {
            try write("template-\(UUID().uuidString).json", """
            {
              "type": "Microsoft.VirtualMachineImages/imageTemplates",
              "apiVersion": "2022-07-01",
              "location": "westus2",
              "identity": {"type": "UserAssigned", "userAssignedIdentities": {"/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourcegroups/id/providers/Microsoft.ManagedIdentity/userAssignedIdentities/builder": {}}},
              "properties": {
                "buildTimeoutInMinutes": \(timeout),
                "vmProfile": {"vmSize": "Standard_D2s_v3"},
                "source": \(source),
                "customize": \(customize),
                "distribute": \(distribute)
              }
            }
            """)
        }

        func build(_ template: String, _ extra: [String] = []) async throws -> KilnExecutable.Result {
            try await kiln(["build", template, "--json"] + extra)
        }

        /// `through`: a command prefix that runs kiln elsewhere (`nsenter` into a lab host's namespaces).
        func kiln(_ arguments: [String], through prefix: [String] = []) async throws -> KilnExecutable.Result {
            try await KilnExecutable.run(arguments + ["--state-dir", state.path],
                                   environment: ["KILN_CATALOG": VMTestEnvironment.repositoryRoot.appendingPathComponent("images/catalog.json").path],
                                   through: prefix)
        }

        /// The VM a build kept (`kiln vm list --json`'s first entry), once there is one (bounded: 300 s); `log` is the
        /// keeping build's output, shown if none comes.
        func awaitKeptVM(log: String) async throws -> [String: Any] {
            let clock = ContinuousClock()
            let waitStart = clock.now
            while clock.now - waitStart < .seconds(300) {
                let list = try await kiln(["vm", "list", "--json"])
                if let first = ((try? JSONSerialization.jsonObject(with: Data(list.stdout.utf8))) as? [[String: Any]])?.first { return first }
                try await Task.sleep(for: .seconds(2))
            }
            Issue.record("no kept VM within 300 s: \((try? String(contentsOfFile: log, encoding: .utf8))?.suffix(3000) ?? "")")
            throw KilnError(.timeout, "no kept VM")
        }

        /// The JSON events a `--json` build printed.
        func events(_ result: KilnExecutable.Result) -> [[String: Any]] {
            result.stdout.split(separator: "\n").compactMap {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }
        }

        func runDirectories() -> [String] {
            ((try? FileManager.default.contentsOfDirectory(atPath: state.runsPath)) ?? []).map { state.runsPath + "/" + $0 }
        }

        /// Nothing of a finished build is left but its record, log and outputs.
        func expectNothingLeftBehind(_ result: [String: Any]?) {
            let runID = result?["runID"] as? String ?? "?"
            #expect(VMTestEnvironment.qemuProcesses(named: "kiln-\(runID)").isEmpty)
            #expect(VMTestEnvironment.qemuProcesses(named: "runs/\(runID)/").isEmpty, "a resumed VM keeps its first run's name")
            for run in runDirectories() {
                let names = Set((try? FileManager.default.contentsOfDirectory(atPath: run)) ?? [])
                for leftover in ["disk.qcow2", "seed.iso", "id_ed25519", "nvram.fd", "downloads", "domain.xml"] {
                    #expect(!names.contains(leftover), "\(run) still has \(leftover)")
                }
                #expect(!names.contains { $0.contains(".partial") }, "\(run) has a partial file: \(names)")
            }
            let cache = state.cachePath + "/checkpoints"
            for folder in (try? FileManager.default.contentsOfDirectory(atPath: cache)) ?? [] {
                #expect(FileManager.default.fileExists(atPath: cache + "/" + folder + "/meta.json"), "an unfinished checkpoint \(folder) is left")
            }
        }
    }

    static let imageID = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/images/providers/Microsoft.Compute/images/golden"
    static let galleryImage = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/images/providers/Microsoft.Compute/galleries/lab/images/debian"
    static let allTargets = """
    [{"type": "VHD", "runOutputName": "debianVhd"},
     {"type": "ManagedImage", "runOutputName": "golden", "imageId": "\(imageID)", "location": "westus2", "artifactTags": {"stage": "a"}},
     {"type": "SharedImage", "runOutputName": "gallery", "galleryImageId": "\(galleryImage)", "targetRegions": [{"name": "westus2", "replicaCount": 2}]},
     {"type": "ManagedImage", "runOutputName": "blocked", "imageId": "\(blockedImageID)", "location": "westus2"}]
    """
    /// A managed image whose place in the store is taken by a stray file: its target fails at distribution time
    /// while the others succeed, so the run is PartiallySucceeded.
    static let blockedImageID = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/images/providers/Microsoft.Compute/images/blocked"

    @Test("""
    a Linux template runs end to end (inline, scriptUri over HTTP, file://, File, a reboot, an override deprovisioning \
    script) into a VHD, a managed image and a gallery; a second template built from the gallery's latest version is \
    run in the background, refused deletion while running, and canceled
    """)
    func endToEnd() async throws {
        let work = try Workspace()
        defer { try? FileManager.default.removeItem(atPath: work.state.path) }
        let served = work.files + "/served"
        try FileManager.default.createDirectory(atPath: served, withIntermediateDirectories: true)
        // Microsoft's quickstart pattern: no shebang, writes under /etc without sudo (AIB runs a scriptUri script as root).
        let setup = """
        # Add a banner to MOTD
        cat >> /etc/motd << EOF
        *** This image was customized by a Kiln quickstart build ***
        EOF
        echo from-http > /opt/kiln/from-http
        echo "http script ran as $(id -un) for ${SUDO_USER:-nobody} with $PACKER_BUILDER_TYPE/$PACKER_BUILD_NAME"

        """
        try setup.write(toFile: served + "/setup.sh", atomically: true, encoding: .utf8)
        try "payload \(UUID().uuidString)\n".write(toFile: served + "/payload.txt", atomically: true, encoding: .utf8)
        let payloadSum = try SHA256Digest.hex(ofFile: served + "/payload.txt")
        let setupSum = try SHA256Digest.hex(ofFile: served + "/setup.sh").uppercased()  // AIB users write either case
        let local = try work.write("local.sh", "#!/bin/sh\nset -e\nsudo mv /tmp/payload.txt /opt/kiln/payload.txt\ncat /proc/sys/kernel/random/boot_id | sudo tee /opt/kiln/boot-before\n")
        let server = try LoopbackHTTPServer(directory: served)
        defer { server.stop() }
        let template = try work.template("""
        [
          {"type": "Shell", "name": "inline-array", "inline": ["echo one | sudo tee /var/lib/kiln-one", "sudo mkdir -p /opt/kiln"]},
          {"type": "Shell", "name": "inline-string", "inline": "echo two | sudo tee /opt/kiln/two"},
          {"type": "Shell", "name": "environment", "inline": [
            "echo \\"inline ran as $(id -un) with $PACKER_BUILDER_TYPE/$PACKER_BUILD_NAME in $(pwd)\\"",
            "read answer || echo 'stdin: end of file'",
            "sudo apt-get -q update >/dev/null",
            "sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q hello"
          ]},
          {"type": "Shell", "name": "http-script", "scriptUri": "\(server.url("setup.sh"))", "sha256Checksum": "\(setupSum)"},
          {"type": "File", "name": "payload", "sourceUri": "\(server.url("payload.txt"))", "destination": "/tmp/payload.txt", "sha256Checksum": "\(payloadSum)"},
          {"type": "Shell", "name": "file-script", "scriptUri": "file://\(local)"},
          {"type": "Shell", "name": "reboot", "inline": ["sudo reboot"]},
          {"type": "Shell", "name": "after-reboot", "inline": ["cat /proc/sys/kernel/random/boot_id | sudo tee /opt/kiln/boot-after"]},
          {"type": "Shell", "name": "deprovision-override", "inline": [
            "printf '#!/bin/sh\\\\necho override > /var/lib/kiln-deprovisioned\\\\n' > /tmp/DeprovisioningScript.sh"
          ]}
        ]
        """, timeout: 60, distribute: Self.allTargets)
        let blockedPath = work.state.path + "/store/images/11111111-2222-3333-4444-555555555555/images/blocked.vhd"
        try FileManager.default.createDirectory(atPath: (blockedPath as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try "stray".write(toFile: blockedPath, atomically: true, encoding: .utf8)
        let result = try await work.build(template)
        let events = work.events(result)
        let final = events.last { $0["event"] as? String == "result" }
        #expect(result.status == 1, "a partial success is not a success")
        #expect(final?["runState"] as? String == "PartiallySucceeded", "\(final ?? [:])\nstderr:\n\(result.stderr.suffix(3000))")

        // Events: phases, each customizer's start and end, output lines with the customizer's name.
        let started = events.filter { $0["event"] as? String == "customizerStart" }.compactMap { $0["name"] as? String }
        #expect(started == ["inline-array", "inline-string", "environment", "http-script", "payload", "file-script", "reboot", "after-reboot", "deprovision-override"])
        func printed(_ customizer: String, _ text: String) -> Bool {
            events.contains { $0["event"] as? String == "output" && $0["customizer"] as? String == customizer && ($0["line"] as? String)?.contains(text) == true }
        }
        // As AIB runs them: inline lines as the build user, a scriptUri script as root through sudo -E sh, both
        // with Packer's variables, in the user's home, with end-of-file on standard input.
        #expect(printed("http-script", "http script ran as root for packer with azure-arm/azure-arm"))
        #expect(printed("environment", "inline ran as packer with azure-arm/azure-arm in /home/packer"))
        #expect(printed("environment", "stdin: end of file"))
        #expect(Set(events.compactMap { $0["runSubState"] as? String }).isSuperset(of: ["Building", "Customizing", "Distributing"]))

        // The run directory: record, log, the VHD.
        let runID = try #require(final?["runID"] as? String)
        let run = work.state.runsPath + "/" + runID
        let log = try String(contentsOfFile: run + "/customization.log", encoding: .utf8)
        #expect(log.contains("[http-script] checksum verified: \(setupSum.lowercased())"))
        #expect(log.contains("[payload] checksum verified: \(payloadSum)"))
        #expect(log.contains("[reboot] the guest restarted"))
        #expect(log.contains("[deprovision] running the template's /tmp/DeprovisioningScript.sh"))
        // The lines AIB's troubleshooting guide sends users to, around and inside each step.
        #expect(log.contains("[http-script] PACKER ERR "), "\(log.prefix(3000))")
        #expect(log.contains("[INFO] (telemetry) Starting provisioner shell"))
        #expect(log.contains("[INFO] (telemetry) ending shell"))
        #expect(log.contains("[INFO] (telemetry) Starting provisioner file"))
        #expect(log.contains("[http-script] PACKER OUT     azure-arm: http script ran as root"))
        #expect(log.contains("[http-script] PACKER OUT ==> azure-arm: Provisioning with shell script: "))
        #expect(log.contains("[DEBUG] starting remote command: chmod +x '/tmp/script_"))
        #expect(log.contains("PACKER_BUILDER_TYPE='azure-arm' PACKER_BUILD_NAME='azure-arm' sudo -E sh '/tmp/script_"))
        #expect(log.contains("[deprovision] PACKER OUT     azure-arm: echo override > /var/lib/kiln-deprovisioned"), "the script is printed before it runs")
        let record = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: run + "/run.json"))) as? [String: Any])
        #expect(record["runState"] as? String == "PartiallySucceeded")
        let outputs = try #require(record["runOutputs"] as? [[String: Any]])
        let vhd = try #require(outputs.first?["path"] as? String)
        #expect(vhd == run + "/debianVhd.vhd")
        #expect(outputs.map { $0["provisioningState"] as? String } == ["Succeeded", "Succeeded", "Succeeded", "Failed"], "\(outputs)")
        #expect((outputs.last?["error"] as? String ?? "").contains("a file is already there"), "\(outputs)")
        #expect(try String(contentsOfFile: blockedPath, encoding: .utf8) == "stray", "the stray file is not overwritten")
        work.expectNothingLeftBehind(final)

        // runOutputs as az prints them; the managed image and gallery version are in the store, on the same VHD.
        let templateName = URL(fileURLWithPath: template).deletingPathExtension().lastPathComponent
        let managedOutput = try await work.kiln(["template", "output", templateName, "golden"])
        let managedJSON = try JSONSerialization.jsonObject(with: Data(managedOutput.stdout.utf8)) as? [String: Any]
        #expect(managedJSON?["type"] as? String == "Microsoft.VirtualMachineImages/imageTemplates/runOutputs")
        #expect((managedJSON?["properties"] as? [String: Any])?["artifactId"] as? String == Self.imageID, "\(managedOutput.stdout)\(managedOutput.stderr)")
        let galleryOutput = try await work.kiln(["template", "output", templateName, "gallery"])
        #expect(galleryOutput.stdout.contains(Self.galleryImage + "/versions/1.0.0"), "\(galleryOutput.stdout)\(galleryOutput.stderr)")
        let images = try await work.kiln(["image", "list"])
        #expect(images.stdout.contains(Self.imageID) && images.stdout.contains(Self.galleryImage + "/versions/1.0.0"), "\(images.stdout)")
        #expect(images.stdout.contains("westus2x2"))

        // The image itself, opened with libguestfs: the steps' effects, the override's marker, no build user.
        let handle = try await VMTestEnvironment.openVHD(vhd)
        defer { handle.close() }
        func read(_ path: String) throws -> String { String(decoding: try handle.readFile(path), as: UTF8.self) }
        #expect(try read("/var/lib/kiln-one") == "one\n")
        #expect(try read("/opt/kiln/two") == "two\n")
        #expect(try read("/opt/kiln/from-http") == "from-http\n")
        #expect(try read("/etc/motd").contains("*** This image was customized by a Kiln quickstart build ***"), "the quickstart's banner")
        #expect(try handle.exists("/usr/bin/hello"), "apt-get install -y in a step installs the package")
        // Nothing of Kiln's is left in the guest: no uploaded script, not the deprovisioning script.
        let leftovers = try handle.ls("/tmp").filter { $0.hasPrefix("script_") || $0 == "DeprovisioningScript.sh" }
        #expect(leftovers.isEmpty, "\(leftovers)")
        #expect(try SHA256Digest.hex(of: handle.readFile("/opt/kiln/payload.txt")) == payloadSum)
        #expect(try read("/opt/kiln/boot-before") != (try read("/opt/kiln/boot-after")))
        #expect(try read("/var/lib/kiln-deprovisioned") == "override\n")
        let accounts = try read("/etc/passwd").split(separator: "\n").map { $0.prefix { $0 != ":" } }
        #expect(!accounts.contains("packer"))
        #expect(!accounts.contains("debian"), "cloud-init's default user is not created, so it does not ship in the image")
        #expect(try !handle.exists("/home/packer"))
        #expect(try !handle.exists("/home/debian"))
        #expect(try !handle.exists("/etc/sudoers.d/90-cloud-init-users"))
        #expect(try !handle.exists("/etc/ssh/ssh_host_ed25519_key"))
        #expect(try !handle.exists("/etc/ssh/ssh_host_ecdsa_key"))
        handle.close()

        try await galleryRoundTripAndCancel(work)
    }

    /// Build B: a created template whose source is the gallery's latest version (the VHD build A wrote), run in the
    /// background. It proves the image boots and holds A's files, then waits in a long step: delete is refused while
    /// it runs, cancel ends it within 10 s with nothing left, and delete then removes its runs.
    func galleryRoundTripAndCancel(_ work: Workspace) async throws {
        let template = try work.template(#"""
        [{"type": "Shell", "name": "from-gallery", "inline": ["cat /opt/kiln/two"]},
         {"type": "Shell", "name": "long", "inline": ["echo long-step-started", "sleep 900"]}]
        """#, source: #"{"type": "SharedImageVersion", "imageVersionId": "\#(Self.galleryImage)/versions/latest"}"#)
        let created = try await work.kiln(["template", "create", "roundtrip", template])
        #expect(created.status == 0, "\(created.stderr)")
        let started = try await work.kiln(["template", "run", "roundtrip", "--no-wait"])
        #expect(started.status == 0, "\(started.stderr)")
        #expect(started.stdout.contains("in the background"))

        // Wait (bounded) for the long step: by then the gallery image booted and showed build A's file.
        let clock = ContinuousClock()
        let waitStart = clock.now
        var log = ""
        while clock.now - waitStart < .seconds(600) {
            log = (try? await work.kiln(["template", "logs", "roundtrip"]).stdout) ?? ""
            if log.contains("[long] PACKER OUT     azure-arm: long-step-started") || log.contains("runState") { break }
            try await Task.sleep(for: .seconds(3))
        }
        #expect(log.contains("[from-gallery] PACKER OUT     azure-arm: two"), "\(log.suffix(3000))")
        #expect(log.contains("resolved to \(Self.galleryImage)/versions/1.0.0"), "\(log.prefix(3000))")
        #expect(log.contains("[long] PACKER OUT     azure-arm: long-step-started"), "\(log.suffix(3000))")

        let show = try await work.kiln(["template", "show", "roundtrip", "--json"])
        let status = ((try? JSONSerialization.jsonObject(with: Data(show.stdout.utf8)) as? [String: Any])?["properties"] as? [String: Any])?["lastRunStatus"] as? [String: Any]
        #expect(status?["runState"] as? String == "Running", "\(show.stdout)")
        #expect(status?["runSubState"] as? String == "Customizing")
        let runID = try #require(status?["runId"] as? String)

        let refused = try await work.kiln(["template", "delete", "roundtrip"])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("has a run in progress"), "\(refused.stderr)")

        let cancelStart = clock.now
        let cancel = try await work.kiln(["template", "cancel", "roundtrip"])
        let cancelTime = clock.now - cancelStart
        #expect(cancel.status == 0, "\(cancel.stdout)\(cancel.stderr)")
        #expect(cancel.stdout.contains("Canceled"))
        #expect(cancelTime < .seconds(10), "cancel took \(cancelTime)")
        #expect(VMTestEnvironment.qemuProcesses(named: "kiln-\(runID)").isEmpty)
        let after = try await work.kiln(["template", "show", "roundtrip"])
        #expect(after.stdout.contains("lastRunStatus: Canceled"), "\(after.stdout)")
        let runDirectory = work.state.runsPath + "/" + runID
        let names = Set((try? FileManager.default.contentsOfDirectory(atPath: runDirectory)) ?? [])
        #expect(names.isDisjoint(with: ["disk.qcow2", "seed.iso", "id_ed25519", "downloads", "domain.xml"]), "\(names)")

        let deleted = try await work.kiln(["template", "delete", "roundtrip"])
        #expect(deleted.status == 0, "\(deleted.stderr)")
        #expect(!FileManager.default.fileExists(atPath: runDirectory))
    }

    @Test("""
    the build cache: a rebuild resumes after the last customizer and gives the same files and package state as the \
    fresh build; editing the last step runs only it; a checkpoint that does not resume is discarded for the one \
    before; a scriptUri whose content changed runs again; --offline after kiln fetch; a kept VM (vm list, ssh, stop) \
    and --resume; cache list and prune
    """)
    func checkpoints() async throws {
        let work = try Workspace()
        defer { try? FileManager.default.removeItem(atPath: work.state.path) }
        let served = work.files + "/served"
        try FileManager.default.createDirectory(atPath: served, withIntermediateDirectories: true)
        try "#!/bin/sh\nset -e\necho script-v1 | sudo tee /opt/ck/one\n".write(toFile: served + "/one.sh", atomically: true, encoding: .utf8)
        let server = try LoopbackHTTPServer(directory: served)
        defer { server.stop() }
        func steps(last: String, lastLine: String? = nil) -> String {
            """
            [
              {"type": "Shell", "name": "zero", "inline": ["sudo mkdir -p /opt/ck", "head -c 4096 /dev/urandom | sha256sum | sudo tee /opt/ck/zero", "sudo apt-get -y -q purge less"]},
              {"type": "Shell", "name": "one", "scriptUri": "\(server.url("one.sh"))"},
              {"type": "Shell", "name": "two", "inline": ["sleep 2 &", "echo two-$(cat /proc/sys/kernel/random/boot_id) | sudo tee /opt/ck/two"]},
              {"type": "Shell", "name": "last", "inline": ["\(lastLine ?? "echo \(last) | sudo tee /opt/ck/last")"]}
            ]
            """
        }
        let original = try work.template(steps(last: "first"))
        let cache = work.state.cachePath + "/checkpoints"
        func started(_ result: KilnExecutable.Result) -> [String] {
            work.events(result).filter { $0["event"] as? String == "customizerStart" }.compactMap { $0["name"] as? String }
        }
        func reused(_ result: KilnExecutable.Result) -> [String] {
            work.events(result).filter { $0["event"] as? String == "customizerEnd" && $0["outcome"] as? String == "reused" }.compactMap { $0["name"] as? String }
        }
        func vhd(_ result: KilnExecutable.Result) throws -> String {
            let final = work.events(result).last { $0["event"] as? String == "result" }
            #expect(final?["runState"] as? String == "Succeeded", "\(final ?? [:])\n\(result.stderr.suffix(3000))")
            work.expectNothingLeftBehind(final)
            let runID = try #require(final?["runID"] as? String)
            return work.state.runsPath + "/\(runID)/debianVhd.vhd"
        }

        // 1. Fresh: boot and four customizers, a checkpoint after each.
        let fresh = try await work.build(original)
        let freshVHD = try vhd(fresh)
        #expect(started(fresh) == ["zero", "one", "two", "last"])
        let written = work.events(fresh).compactMap { $0["message"] as? String }.filter { $0.hasPrefix("checkpoint ") }
        #expect(written.count == 5, "\(written)")
        let listed = try await work.kiln(["cache", "list", "--json"])
        let entries = try #require(try JSONSerialization.jsonObject(with: Data(listed.stdout.utf8)) as? [[String: Any]])
        #expect(entries.compactMap { $0["step"] as? String }.sorted() == ["after boot", "after customize[0] zero", "after customize[1] one",
                                                                             "after customize[2] two", "after customize[3] last"], "\(listed.stdout)")
        // Each layer holds what its step wrote, not the disk.
        for entry in entries {
            let folder = try #require(entry["folder"] as? String)
            #expect(FileSize.allocatedBytes(folder + "/disk.qcow2") < 200 << 20, "\(folder)")
        }

        // 2. The same template again: nothing runs but deprovisioning; the image holds the same files and packages.
        let again = try await work.build(original)
        let againVHD = try vhd(again)
        #expect(started(again).isEmpty, "\(started(again))")
        #expect(reused(again) == ["zero", "one", "two", "last"])
        #expect(!work.events(again).contains { $0["event"] as? String == "phase" && $0["detail"] as? String == "boot" })

        // 3. Only the last step edited: it alone runs, on the guest as the step before left it.
        let edited = try work.template(steps(last: "second"))
        let editedBuild = try await work.build(edited)
        let editedVHD = try vhd(editedBuild)
        #expect(started(editedBuild) == ["last"])
        #expect(reused(editedBuild) == ["zero", "one", "two"])

        // 4. That checkpoint damaged: discarded with a notice, the build resumes from the one before.
        let editedRun = try #require(work.events(editedBuild).last?["runID"] as? String)
        let cacheList = try await work.kiln(["cache", "list", "--json"])
        let listing = try #require(try JSONSerialization.jsonObject(with: Data(cacheList.stdout.utf8)) as? [[String: Any]])
        let afterLastFolder = try #require(listing.first { $0["runID"] as? String == editedRun && $0["step"] as? String == "after customize[3] last" }?["folder"] as? String)
        let afterLast = (afterLastFolder as NSString).lastPathComponent
        try Data("not a memory image".utf8).write(to: URL(fileURLWithPath: cache + "/" + afterLast + "/memory.save"))
        let discarded = try await work.build(edited)
        _ = try vhd(discarded)
        #expect(work.events(discarded).contains { $0["event"] as? String == "warning" && ($0["message"] as? String ?? "").contains("did not resume and is discarded") },
                "\(discarded.stdout.suffix(3000))")
        #expect(!FileManager.default.fileExists(atPath: cache + "/" + afterLast))
        #expect(started(discarded) == ["last"])

        // 5. The served script changed (no checksum in the template): its step and the ones after run again.
        try "#!/bin/sh\nset -e\necho script-v2 | sudo tee /opt/ck/one\n".write(toFile: served + "/one.sh", atomically: true, encoding: .utf8)
        let changed = try await work.build(original)
        let changedVHD = try vhd(changed)
        #expect(started(changed) == ["one", "two", "last"])
        #expect(reused(changed) == ["zero"])

        // The images, side by side in one libguestfs launch.
        let handle = try GuestfsHandle()
        defer { handle.close() }
        if await VMTestEnvironment.accelerator() == .tcg { try handle.setBackendSettings(["force_tcg"]) }
        try handle.setBackend("direct")
        let images = [freshVHD, againVHD, editedVHD, changedVHD]
        for image in images { try handle.addDrive(image, format: "vpc", readOnly: true) }
        let launching = VMTestEnvironment.UncheckedBox(value: handle)
        try await OwnThread.run { try launching.value.launch() }
        for (index, device) in ["a", "b", "c", "d"].enumerated() {
            try handle.makeMountPoint("/\(device)")
            try handle.mountReadOnly("/dev/sd\(device)1", at: "/\(device)")
            _ = index
        }
        func read(_ image: String, _ path: String) throws -> String { String(decoding: try handle.readFile("/\(image)" + path), as: UTF8.self) }
        for path in ["/opt/ck/zero", "/opt/ck/one", "/opt/ck/two", "/opt/ck/last", "/var/lib/dpkg/status"] {
            #expect(try read("a", path) == (try read("b", path)), "\(path) differs between the fresh and the cached build")
        }
        #expect(try !read("a", "/var/lib/dpkg/status").contains("Package: less\n"), "the purge is in the image")
        #expect(try read("a", "/opt/ck/one") == "script-v1\n")
        for path in ["/opt/ck/zero", "/opt/ck/one", "/opt/ck/two", "/var/lib/dpkg/status"] {
            #expect(try read("a", path) == (try read("c", path)), "\(path): the edited build reused steps 0-2")
        }
        #expect(try read("c", "/opt/ck/last") == "second\n")
        #expect(try read("a", "/opt/ck/zero") == (try read("d", "/opt/ck/zero")))
        #expect(try read("d", "/opt/ck/one") == "script-v2\n")
        #expect(try !read("b", "/etc/passwd").contains("packer:"), "deprovisioning and cleanup ran on the resumed guest")
        handle.close()

        // 6. Offline: nothing fetched yet, so the build fails before boot naming the URI; after kiln fetch it runs
        // with the server gone, the script pinned by the sha256 seen when it was fetched.
        let notFetched = try await work.build(original, ["--offline"])
        let notFetchedResult = work.events(notFetched).last { $0["event"] as? String == "result" }
        #expect(notFetched.status == 1)
        let offlineMessage = notFetchedResult?["message"] as? String ?? ""
        #expect(offlineMessage.contains("properties.customize[1].scriptUri: \(server.url("one.sh"))") && offlineMessage.contains("kiln fetch"), "\(offlineMessage)")
        #expect(!work.events(notFetched).contains { $0["event"] as? String == "phase" && $0["detail"] as? String == "resolve source" })
        let fetched = try await work.kiln(["fetch", original])
        #expect(fetched.status == 0, "\(fetched.stdout)\(fetched.stderr)")
        #expect(fetched.stdout.contains("properties.customize[1].scriptUri: fetched \(server.url("one.sh"))"), "\(fetched.stdout)")
        #expect(fetched.stdout.contains("no sha256Checksum: pinned"))
        server.stop()
        let offline = try await work.build(original, ["--offline"])
        _ = try vhd(offline)
        #expect(reused(offline) == ["zero", "one", "two", "last"], "the fetched script is the one the cached chain ran")
        let offlineRun = try #require(work.events(offline).last?["runID"] as? String)
        let offlineLog = try String(contentsOfFile: work.state.runsPath + "/\(offlineRun)/customization.log", encoding: .utf8)
        #expect(offlineLog.contains("pinned by the sha256 seen when it was fetched"), "\(offlineLog.prefix(3000))")

        // 7. A failing last step with --on-error abort keeps the VM: listed, reachable with kiln vm ssh, stopped with
        // kiln vm stop; then --resume continues that run from its last good checkpoint with the fixed template.
        let broken = try work.template(steps(last: "", lastLine: "echo broken; exit 3"))
        let keeper = try KilnExecutable.start(["build", broken, "--json", "--on-error", "abort", "--offline", "--state-dir", work.state.path],
                                              environment: ["KILN_CATALOG": VMTestEnvironment.repositoryRoot.appendingPathComponent("images/catalog.json").path],
                                              outputPath: work.files + "/keeper.log")
        let kept = try await work.awaitKeptVM(log: work.files + "/keeper.log")
        let keptRun = try #require(kept["runID"] as? String)
        #expect((kept["failure"] as? String ?? "").contains("exit status 3"))
        let table = try await work.kiln(["vm", "list"])
        #expect(table.stdout.contains(keptRun) && table.stdout.contains("127.0.0.1:"), "\(table.stdout)")
        // Everything after -- is the guest's command line, so the state directory goes before it.
        let inside = try await KilnExecutable.run(["vm", "ssh", "--state-dir", work.state.path, keptRun, "--", "cat", "/opt/ck/one"])
        #expect(inside.status == 0 && inside.stdout == "script-v2\n", "\(inside.stdout)\(inside.stderr)")
        let status = try await KilnExecutable.run(["vm", "ssh", "--state-dir", work.state.path, keptRun, "--", "exit", "7"])
        #expect(status.status == 7, "\(status.stderr)")
        let stopped = try await work.kiln(["vm", "stop", keptRun])
        #expect(stopped.status == 0, "\(stopped.stderr)")
        #expect(try await keeper.wait() == 1, "the kept run failed")
        let afterStop = try await work.kiln(["vm", "list", "--json"])
        #expect((try? JSONSerialization.jsonObject(with: Data(afterStop.stdout.utf8)) as? [Any])?.isEmpty == true, "\(afterStop.stdout)")
        #expect(VMTestEnvironment.qemuProcesses(named: "runs/\(keptRun)/").isEmpty, "the kept VM is gone")
        let fixed = try work.template(steps(last: "fixed"))
        let resumedRun = try await work.build(fixed, ["--resume", keptRun, "--offline"])
        _ = try vhd(resumedRun)
        #expect(started(resumedRun) == ["last"], "\(resumedRun.stdout.suffix(2000))")
        #expect(reused(resumedRun) == ["zero", "one", "two"])

        // Pruning: everything goes; nothing is left in the cache.
        let pruned = try await work.kiln(["cache", "prune", "--all"])
        #expect(pruned.status == 0, "\(pruned.stderr)")
        #expect(pruned.stdout.contains("removed"), "\(pruned.stdout)")
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: cache)) ?? []).isEmpty)
        let empty = try await work.kiln(["cache", "list"])
        #expect(empty.stdout.contains("the build cache is empty"), "\(empty.stdout)")
    }

    @Test("a checksum mismatch fails before anything boots and prints both sums")
    func checksumMismatch() async throws {
        let work = try Workspace()
        defer { try? FileManager.default.removeItem(atPath: work.state.path) }
        let script = try work.write("script.sh", "#!/bin/sh\necho should-not-run\n")
        let actual = try SHA256Digest.hex(ofFile: script)
        let wrong = String(repeating: "ab", count: 32)
        let template = try work.template(#"[{"type": "Shell", "name": "checked", "scriptUri": "file://\#(script)", "sha256Checksum": "\#(wrong)"}]"#)
        let result = try await work.build(template)
        let final = work.events(result).last { $0["event"] as? String == "result" }
        #expect(result.status == 1)
        #expect(final?["runState"] as? String == "Failed")
        let message = final?["message"] as? String ?? ""
        #expect(message.contains("properties.customize[0].sha256Checksum"), "\(message)")
        #expect(message.contains(wrong) && message.contains(actual), "\(message)")
        #expect(!work.events(result).contains { $0["event"] as? String == "customizerStart" })
        #expect(!result.stdout.contains("should-not-run"))
        #expect(!work.events(result).contains { ($0["detail"] as? String) == "boot" })
        work.expectNothingLeftBehind(final)
    }

    @Test("a File destination outside /tmp is rejected before boot")
    func fileOutsideTmp() async throws {
        let work = try Workspace()
        defer { try? FileManager.default.removeItem(atPath: work.state.path) }
        let payload = try work.write("payload.txt", "x\n")
        let template = try work.template(#"[{"type": "File", "name": "etc", "sourceUri": "file://\#(payload)", "destination": "/etc/payload.txt"}]"#)
        let result = try await work.build(template)
        let final = work.events(result).last { $0["event"] as? String == "result" }
        #expect(result.status == 1)
        let message = final?["message"] as? String ?? ""
        #expect(message.contains("properties.customize[0].destination"), "\(message)")
        #expect(message.contains("/tmp"))
        #expect(work.runDirectories().isEmpty, "validation failures create no run directory")
    }

    @Test("a failing inline line fails its step with the exit status and the last output")
    func failingLine() async throws {
        let work = try Workspace()
        defer { try? FileManager.default.removeItem(atPath: work.state.path) }
        let template = try work.template(#"[{"type": "Shell", "name": "ok", "inline": ["true"]}, {"type": "Shell", "name": "breaks", "inline": ["echo before", "false", "echo never"]}]"#)
        let result = try await work.build(template)
        let final = work.events(result).last { $0["event"] as? String == "result" }
        #expect(result.status == 1)
        let message = final?["message"] as? String ?? ""
        #expect(message.contains("properties.customize[1] (breaks) failed with exit status 1"), "\(message)")
        #expect(message.contains("before"))
        #expect(!message.contains("never"))
        #expect(message.contains("customization.log"))
        #expect(!result.stdout.contains("\"line\":\"never\""))
        work.expectNothingLeftBehind(final)
    }

    @Test("a build that outlives buildTimeoutInMinutes fails with AIB's message and leaves nothing")
    func timeout() async throws {
        let work = try Workspace()
        defer { try? FileManager.default.removeItem(atPath: work.state.path) }
        let template = try work.template(#"[{"type": "Shell", "name": "slow", "inline": ["sleep 600"]}]"#, timeout: 1)
        let clock = ContinuousClock()
        let start = clock.now
        let result = try await work.build(template)
        let final = work.events(result).last { $0["event"] as? String == "result" }
        #expect(result.status == 1)
        #expect(final?["runState"] as? String == "Failed")
        #expect((final?["message"] as? String ?? "").contains("[ERROR] Failed while waiting for packerizer: Timeout waiting for microservice to complete: 'context deadline exceeded'"))
        #expect(clock.now - start < .seconds(120))
        work.expectNothingLeftBehind(final)
    }
}
