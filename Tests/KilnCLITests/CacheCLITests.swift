import Foundation
import KilnSupport
import KilnTestSupport
import Testing

/// `kiln fetch`, `kiln build --offline`'s refusal, `kiln cache` and `kiln vm list|ssh|stop` without a VM (the VM
/// suite's checkpoint test covers them with real builds).
@Suite("kiln fetch, cache and kept VMs (local state)")
struct CacheCLITests {
    final class Workspace {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-cli-cache-\(UUID().uuidString)").path
        var served: String { path + "/served" }

        init() throws {
            try FileManager.default.createDirectory(atPath: path + "/served", withIntermediateDirectories: true)
        }

        deinit { try? FileManager.default.removeItem(atPath: path) }

        func kiln(_ arguments: [String]) async throws -> KilnExecutable.Result {
            try await KilnExecutable.run(arguments, environment: ["KILN_STATE_DIR": path + "/state"])
        }

        func write(_ name: String, _ text: String) throws -> String {
            try text.write(toFile: path + "/" + name, atomically: true, encoding: .utf8)
            return path + "/" + name
        }
    }

    static let imageID = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg/providers/Microsoft.Compute/images/absent"

    static func template(_ customize: String) -> String {
        """
        {"type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-07-01", "location": "westus2",
         "identity": {"type": "UserAssigned", "userAssignedIdentities": {"/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourcegroups/id/providers/Microsoft.ManagedIdentity/userAssignedIdentities/builder": {}}},
         "properties": {"source": {"type": "ManagedImage", "imageId": "\(imageID)"},
           "customize": \(customize),
           "distribute": [{"type": "VHD", "runOutputName": "v"}]}}
        """
    }

    @Test("Ctrl-C during kiln fetch ends the download at once and leaves nothing behind; a dead fetch's leftovers are swept")
    func interruptedFetchLeavesNothing() async throws {
        let work = try Workspace()
        // A server that trickles a large file for ever.
        let server = try ScriptedHTTPServer { _, connection in
            guard connection.send("HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\nConnection: close\r\n\r\n") else { return }
            let piece = [UInt8](repeating: 0x41, count: 4096)
            while connection.send(piece) { Thread.sleep(forTimeInterval: 0.05) }
        }
        defer { server.stop() }
        let template = try work.write("t.json", Self.template("""
        [{"type": "File", "name": "big", "sourceUri": "\(server.url("/big.iso"))", "destination": "/tmp/big.iso"}]
        """))
        let downloads = work.path + "/state/cache/downloads"
        // Leftovers of a fetch killed outright (a PID above pid_max: no such process).
        try FileManager.default.createDirectory(atPath: downloads + "/.fetch-99999999-1", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: downloads + "/sha256", withIntermediateDirectories: true)
        #expect(FileManager.default.createFile(atPath: downloads + "/sha256/abc.partial-99999999", contents: Data("x".utf8)))

        let output = work.path + "/fetch.out"
        let fetch = try KilnExecutable.start(["fetch", template], environment: ["KILN_STATE_DIR": work.path + "/state"], outputPath: output)
        // Wait until the download is under way.
        let deadline = Date().addingTimeInterval(30)
        while server.requests == 0 && Date() < deadline { try await Task.sleep(for: .milliseconds(100)) }
        try await Task.sleep(for: .milliseconds(500))
        let interruptedAt = Date()
        kill(fetch.pid, SIGINT)
        let status = try await fetch.wait()
        #expect(Date().timeIntervalSince(interruptedAt) < 5, "the download ends at once (the process exit included; room for a loaded CI machine)")
        #expect(status == 1)
        let printed = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        #expect(printed.contains("fetch interrupted after 0 download(s)"), "\(printed)")
        let left = (try? FileManager.default.contentsOfDirectory(atPath: downloads)) ?? []
        #expect(!left.contains { $0.hasPrefix(".fetch-") }, "\(left)")
        #expect(!left.contains("index.json"), "nothing was recorded: \(left)")
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: downloads + "/sha256")) ?? []).isEmpty)
    }

    @Test("fetch keeps verified downloads, pins those without a checksum, refuses a mismatch and names a missing source; --offline then lists only what is missing, before anything starts")
    func fetchAndOffline() async throws {
        let work = try Workspace()
        try "#!/bin/sh\necho a\n".write(toFile: work.served + "/a.sh", atomically: true, encoding: .utf8)
        try "payload\n".write(toFile: work.served + "/b.txt", atomically: true, encoding: .utf8)
        try "#!/bin/sh\necho c\n".write(toFile: work.served + "/c.sh", atomically: true, encoding: .utf8)
        let server = try LoopbackHTTPServer(directory: work.served)
        defer { server.stop() }
        let actualA = try sha256(work.served + "/a.sh")
        let local = try work.write("local.sh", "#!/bin/sh\ntrue\n")
        let template = try work.write("t.json", Self.template("""
        [{"type": "Shell", "name": "a", "scriptUri": "\(server.url("a.sh"))", "sha256Checksum": "\(actualA.uppercased())"},
         {"type": "File", "name": "b", "sourceUri": "\(server.url("b.txt"))", "destination": "/tmp/b.txt"},
         {"type": "Shell", "name": "c", "scriptUri": "\(server.url("c.sh"))", "sha256Checksum": "\(String(repeating: "0", count: 64))"},
         {"type": "Shell", "name": "local", "scriptUri": "file://\(local)"}]
        """))
        let fetched = try await work.kiln(["fetch", template])
        #expect(fetched.status == 1, "a mismatch and a missing source fail the fetch")
        #expect(fetched.stdout.contains("properties.customize[0].scriptUri: fetched \(server.url("a.sh"))") && fetched.stdout.contains("sha256Checksum verified"), "\(fetched.stdout)")
        #expect(fetched.stdout.contains("properties.customize[1].sourceUri: fetched \(server.url("b.txt"))") && fetched.stdout.contains("no sha256Checksum: pinned"), "\(fetched.stdout)")
        #expect(fetched.stderr.contains("properties.customize[2].scriptUri: sha256 checksum mismatch"), "\(fetched.stderr)")
        #expect(fetched.stdout.contains("properties.customize[3].scriptUri: file://\(local) is a local file"))
        #expect(fetched.stderr.contains(Self.imageID), "\(fetched.stderr)")
        #expect(fetched.stdout.contains("2 download(s)") && fetched.stdout.contains("1 without a sha256Checksum"), "\(fetched.stdout)")
        let index = try String(contentsOfFile: work.path + "/state/cache/downloads/index.json", encoding: .utf8)
        #expect(index.contains("a.sh") && index.contains("b.txt") && !index.contains("c.sh"), "\(index)")

        // The server is gone: offline, only c.sh is missing, and nothing is resolved or booted.
        server.stop()
        let offline = try await work.kiln(["build", template, "--offline", "--json"])
        #expect(offline.status == 1)
        let events = offline.stdout.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        let message = events.last?["message"] as? String ?? ""
        #expect(message.contains("--offline: 1 download(s) are not in the download cache"), "\(offline.stdout)")
        #expect(message.contains("properties.customize[2].scriptUri: \(server.url("c.sh"))"), "\(message)")
        #expect(!message.contains("customize[0]"))
        #expect(!events.contains { $0["detail"] as? String == "resolve source" })
    }

    @Test("a kept VM whose keeping process died: vm list and vm stop really stop it (its QEMU stand-in is killed), then forget it")
    func deadKeeper() async throws {
        let work = try Workspace()
        for run in ["deadbee1", "deadbee2"] {
            let directory = work.path + "/state/runs/" + run
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            // A keeper that is gone: this boot, a PID that cannot be running with that start time.
            let record = """
            {"runID": "\(run)", "templateName": "t", "templatePath": "/t.json", "domainName": "kiln-\(run)", "sshPort": 1,
             "username": "packer", "privateKeyPath": "\(directory)/id_ed25519", "knownHostsPath": "\(directory)/known_hosts",
             "hostKey": "ssh-ed25519 AAAA", "owner": "\(ProcessIdentity.current.bootID):\(getpid()):1", "keptAt": "2026-01-01T00:00:00Z", "failure": "step failed"}
            """
            try record.write(toFile: directory + "/kept.json", atomically: true, encoding: .utf8)
        }
        // Stand-ins for the VMs' QEMU: their command lines name the run directories' disks.
        let first = try StandInProcess(naming: work.path + "/state/runs/deadbee1/disk.qcow2")
        let second = try StandInProcess(naming: work.path + "/state/runs/deadbee2/disk.qcow2")

        let stop = try await work.kiln(["vm", "stop", "deadbee1"])
        #expect(stop.status == 0 && stop.stdout.contains("stopped the build VM of run deadbee1 (the process keeping it had died)"), "\(stop.stdout)\(stop.stderr)")
        // vm stop surveys every kept VM: the other dead keeper's VM goes too.
        try await Task.sleep(for: .milliseconds(200))
        #expect(!first.isAlive && !second.isAlive)
        #expect(!FileManager.default.fileExists(atPath: work.path + "/state/runs/deadbee1/kept.json"))
        let list = try await work.kiln(["vm", "list"])
        #expect(list.status == 0 && list.stdout.contains("no kept build VMs"), "\(list.stdout)")
    }

    @Test("cache and kept-VM commands on empty state; bad arguments are usage errors")
    func emptyState() async throws {
        let work = try Workspace()
        let list = try await work.kiln(["cache", "list"])
        #expect(list.status == 0 && list.stdout.contains("the build cache is empty"), "\(list.stdout)\(list.stderr)")
        let prune = try await work.kiln(["cache", "prune"])
        #expect(prune.status == 0 && prune.stdout.contains("removed 0 checkpoint(s)"), "\(prune.stdout)")
        let badAge = try await work.kiln(["cache", "prune", "--older-than", "soon"])
        #expect(badAge.status == 64 && badAge.stderr.contains("--older-than expects an age"), "\(badAge.stderr)")
        let badSize = try await work.kiln(["cache", "prune", "--max-size", "lots"])
        #expect(badSize.status == 64 && badSize.stderr.contains("--max-size expects a size"))
        let vms = try await work.kiln(["vm", "list"])
        #expect(vms.status == 0 && vms.stdout.contains("no kept build VMs"), "\(vms.stdout)")
        for command in [["vm", "ssh", "nope"], ["vm", "stop", "nope"]] {
            let result = try await work.kiln(command)
            #expect(result.status == 1 && result.stderr.contains("expected a kept build VM for run nope, found none"), "\(result.stderr)")
        }
        let resume = try await work.kiln(["build", "--resume", "nope"])
        #expect(resume.status == 1 && resume.stderr.contains("--resume: expected a run nope"), "\(resume.stderr)")
        let neither = try await work.kiln(["build"])
        #expect(neither.status == 64 && neither.stderr.contains("expected a template file, or --resume RUN"), "\(neither.stderr)")
    }

    func sha256(_ path: String) throws -> String {
        let result = try Process.output("/usr/bin/sha256sum", [path])
        return String(result.prefix(64))
    }
}

extension Process {
    static func output(_ tool: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }
}
