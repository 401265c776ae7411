import Foundation
import KilnBuild
import KilnLibvirt
import KilnMachine
import KilnSupport

/// A build on another libvirt host against the same build on the embedded driver, and the source's trip there:
/// the upload through libvirt's storage API (over the connection's SSH) and the download back, against `scp` of the
/// same file with the URI's own ssh options. `kiln-bench remote --connect URI [--pool NAME] [--rounds N] [--accel kvm|tcg]`; the pool
/// must exist (`kiln doctor --connect URI --pool NAME` prints the commands that make it).
struct RemoteBenchmark {
    var uri: String
    var pool: String
    var rounds: Int
    /// nil: as a build with --accel auto decides for that host (its libvirt's word).
    var accelerator: Accelerator?
    /// Also builds with checkpoints, fresh and then resumed, here and there (`--checkpoints`).
    var checkpoints = false

    func run() async throws(KilnError) {
        let remote = try RemoteHost(uri: uri, pool: pool)
        let work = try PrivateDirectory.makeTemporary(prefix: "kiln-bench-remote-")
        defer { try? FileManager.default.removeItem(atPath: work) }
        let state = StateDirectory(explicit: work + "/state")
        let image = try await ImageCatalog.locate(state: state).resolve(reference: "Debian:debian-12:12")
        let bytes = FileSize.bytes(image.path)
        let mib = Double(bytes) / 1_048_576
        print("remote benchmark: \(remote.host), pool \(pool); \(image.displayName) (\(ByteSize.format(bytes)))")

        // The source's trip: storage API up and down, then scp up and down, `rounds` times each.
        let connection = try await LibvirtConnection.open(uri)
        let storagePool = try await connection.storagePool(named: pool)
        print("transfer  storage-api  scp")
        for round in 1...rounds {
            let clock = ContinuousClock()
            let name = "kiln-bench-\(UUID().uuidString.prefix(8)).qcow2"
            let volume = try await storagePool.createVolume(StorageVolumeSpec(name: name, capacityBytes: bytes, format: .raw))
            let directory = (volume.path as NSString).deletingLastPathComponent
            var start = clock.now
            try await volume.upload(from: image.path)
            let up = (clock.now - start).inSeconds
            start = clock.now
            try await volume.download(to: work + "/down.qcow2")
            let down = (clock.now - start).inSeconds
            try? FileManager.default.removeItem(atPath: work + "/down.qcow2")
            try await volume.delete()
            let target = "\(remote.destination):\(directory)/\(name)"
            start = clock.now
            try await Subprocess.check("scp", scpOptions(remote) + [image.path, target], timeout: .seconds(600))
            let scpUp = (clock.now - start).inSeconds
            start = clock.now
            try await Subprocess.check("scp", scpOptions(remote) + [target, work + "/down.qcow2"], timeout: .seconds(600))
            let scpDown = (clock.now - start).inSeconds
            try? FileManager.default.removeItem(atPath: work + "/down.qcow2")
            try await storagePool.refresh()
            try? await storagePool.volume(named: name).delete()
            print(String(format: "up %d     %5.1fs %5.0f MiB/s  %5.1fs %5.0f MiB/s", round, up, mib / up, scpUp, mib / scpUp))
            print(String(format: "down %d   %5.1fs %5.0f MiB/s  %5.1fs %5.0f MiB/s", round, down, mib / down, scpDown, mib / scpDown))
        }
        await connection.close()

        // The same three-step template, built here and there, alternately; neither reads or writes checkpoints.
        var decision = try await remote.acceleratorDecision()
        if let accelerator { decision = AcceleratorDecision(accelerator: accelerator, evidence: "--accel \(accelerator.rawValue)", bootID: "", decidedAt: Date()) }
        try await remote.uploadSource(image) { print("source: \($0)") }
        print("builds (\(decision.accelerator.rawValue) on both: \(decision.evidence)); the remote build finds its source uploaded")
        print("round  embedded  remote    ratio")
        for round in 1...rounds {
            let local = try await timeBuild(work: work + "/local-\(round)", state: state, remote: nil, accelerator: decision.accelerator)
            let there = try await timeBuild(work: work + "/remote-\(round)", state: state, remote: remote, accelerator: decision.accelerator)
            print(String(format: "%5d  %6.1fs  %6.1fs  %.2f", round, local, there, there / local))
        }
        guard checkpoints else { return }

        // With checkpoints (after boot and each step): a fresh build, then the same build resumed after its last
        // step, here and there; each round in a build cache of its own.
        print("with checkpoints: fresh, then resumed from the last one")
        print("round  embedded fresh  resumed   remote fresh  resumed   ratios")
        for round in 1...rounds {
            var times: [Double] = []
            for remote in [nil, remote] as [RemoteHost?] {
                let cacheState = StateDirectory(explicit: work + "/state-checkpoints-\(round)-\(remote == nil ? "here" : "there")")
                try? FileManager.default.createDirectory(atPath: cacheState.path, withIntermediateDirectories: true)
                for pass in ["fresh", "resumed"] {
                    times.append(try await timeBuild(work: work + "/ckpt-\(round)-\(pass)", state: cacheState, remote: remote,
                                                     accelerator: decision.accelerator, checkpoints: true))
                }
                // The checkpoints go (there: their volumes in the host's pool).
                let removed = CheckpointCache(state: cacheState).prune(maxBytes: 0).removed
                await RemoteCheckpointFiles.delete(removed.map(\.machine)) { print("note: \($0)") }
            }
            print(String(format: "%5d  %12.1fs  %6.1fs  %11.1fs  %6.1fs   %.2f %.2f", round, times[0], times[1], times[2], times[3],
                         times[2] / times[0], times[3] / times[1]))
        }
    }

    /// scp with the URI's ssh program and options (scp spells the port -P).
    func scpOptions(_ remote: RemoteHost) -> [String] {
        var options = ["-q", "-S", remote.sshCommand]
        var rest = remote.sshOptions[...]
        while let first = rest.first {
            rest = rest.dropFirst()
            if first == "-p", let port = rest.first {
                options += ["-P", port]
                rest = rest.dropFirst()
            } else {
                options.append(first)
            }
        }
        return options
    }

    func timeBuild(work: String, state: StateDirectory, remote: RemoteHost?, accelerator: Accelerator,
                   checkpoints: Bool = false) async throws(KilnError) -> Double {
        try? FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        let template = work + "/template.json"
        try? benchTemplate(steps: PackerBenchmark.steps, size: "Standard_D2s_v3", vhdURI: work + "/out.vhd")
            .write(toFile: template, atomically: true, encoding: .utf8)
        var request = BuildRequest(templatePath: template, state: state, accelerator: accelerator == .kvm ? .kvm : .tcg,
                                   libvirtURI: remote?.uri, useCache: checkpoints, writeCheckpoints: checkpoints)
        request.remote = remote
        let clock = ContinuousClock()
        let start = clock.now
        let result = await BuildEngine(request) { _ in }.run()
        guard result.record.runState == .succeeded else {
            throw KilnError(.external, "the \(remote == nil ? "embedded" : "remote") build failed: \(result.record.message)")
        }
        try? FileManager.default.removeItem(atPath: work)
        return (clock.now - start).inSeconds
    }
}
