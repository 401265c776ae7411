import Foundation
import KilnBuild
import KilnMachine
import KilnSupport

/// The build cache at work: a template with several customizers built fresh, then again with only its last step
/// edited (the loop of a user debugging a step). Each round uses an empty cache and also times the fresh build with
/// `--no-checkpoints`, which shows what writing checkpoints costs a first build.
struct RebuildBenchmark {
    var rounds: Int
    var size: String

    static func steps(last: String) -> [[String]] {
        [
            ["sudo mkdir -p /opt/bench", "for i in $(seq 1 200); do echo line $i | sudo tee -a /opt/bench/log >/dev/null; done"],
            ["sudo dd if=/dev/urandom of=/opt/bench/blob bs=1M count=64 status=none", "sha256sum /opt/bench/blob"],
            ["sudo python3 -c 'for i in range(2000): open(f\"/opt/bench/f{i}\", \"w\").write(str(i) * 100)'"],
            ["sudo apt-get -y -q purge less", "sudo apt-get -y -q clean"],
            ["sudo useradd -m -s /bin/bash appuser", "echo 'appuser ALL=(ALL) NOPASSWD:/usr/bin/systemctl' | sudo tee /etc/sudoers.d/appuser"],
            ["echo \(last) | sudo tee /opt/bench/last"],
        ]
    }

    func run() async throws(KilnError) {
        let work = try PrivateDirectory.makeTemporary(prefix: "kiln-bench-rebuild-")
        defer { try? FileManager.default.removeItem(atPath: work) }
        let decision = await AcceleratorProbe.decide(.auto, cacheDirectory: KilnCache.path())
        let stepCount = RebuildBenchmark.steps(last: "").count
        print("rebuild benchmark: Debian:debian-12:12, \(size), \(decision.accelerator.rawValue); \(stepCount) customizers, the last one edited")
        print("round  fresh(no ckpt)  fresh     edited-last  edited/fresh  checkpoints")
        var ratios: [Double] = []
        var overheads: [Double] = []
        var perCheckpoint: [(label: String, layer: UInt64, memory: UInt64)] = []
        for round in 1...rounds {
            let state = StateDirectory(explicit: work + "/state-\(round)")
            let plain = try await time(template(work: work, name: "plain-\(round)", last: "one"), state: state, checkpoints: false)
            let fresh = try await time(template(work: work, name: "fresh-\(round)", last: "one"), state: state, checkpoints: true)
            let edited = try await time(template(work: work, name: "edited-\(round)", last: "two"), state: state, checkpoints: true)
            let cache = CheckpointCache(state: state)
            let entries = cache.entries().filter { $0.templateName == "fresh-\(round)" }
            if round == 1 {
                perCheckpoint = entries.map {
                    ($0.stepDescription, FileSize.allocatedBytes($0.machine.diskPath), FileSize.allocatedBytes($0.machine.memoryPath))
                }
            }
            ratios.append(edited / fresh)
            overheads.append(fresh - plain)
            print(String(format: "%5d  %13.1fs  %7.1fs  %10.1fs  %12.2f  %d, %@", round, plain, fresh, edited, edited / fresh,
                         entries.count, ByteSize.format(entries.reduce(0) { $0 + cache.sizeBytes($1) })))
            try? FileManager.default.removeItem(atPath: state.path)
        }
        let meanRatio = ratios.reduce(0, +) / Double(ratios.count)
        print(String(format: "mean edited/fresh %.2f (target ≤ 0.15); checkpoints cost a fresh build %.1fs", meanRatio,
                     overheads.reduce(0, +) / Double(overheads.count)))
        print("disk per checkpoint (round 1): the layer holds what the step wrote; the memory image what the guest had touched")
        for checkpoint in perCheckpoint {
            print("  " + checkpoint.label.padding(toLength: 28, withPad: " ", startingAt: 0)
                  + " layer " + ByteSize.format(checkpoint.layer).padding(toLength: 9, withPad: " ", startingAt: 0)
                  + " memory " + ByteSize.format(checkpoint.memory))
        }
    }

    private func template(work: String, name: String, last: String) -> String {
        let path = work + "/\(name).json"
        try? benchTemplate(steps: RebuildBenchmark.steps(last: last), size: size).write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    private func time(_ path: String, state: StateDirectory, checkpoints: Bool) async throws(KilnError) -> Double {
        let clock = ContinuousClock()
        let start = clock.now
        let request = BuildRequest(templatePath: path, state: state, useCache: checkpoints, writeCheckpoints: checkpoints)
        let result = await BuildEngine(request) { _ in }.run()
        let elapsed = (clock.now - start).inSeconds
        guard result.record.runState == .succeeded else { throw KilnError(.external, "the build of \(path) failed: \(result.record.message)") }
        try? FileManager.default.removeItem(atPath: result.runDirectory)
        return elapsed
    }
}
