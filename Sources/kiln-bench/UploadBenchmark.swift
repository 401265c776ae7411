import Foundation
import KilnDigest
import KilnBuild
import KilnGuest
import KilnMachine
import KilnSupport
import KilnWinRM

/// How fast a file reaches a guest the way Windows builds upload: served by `LoopbackFileShare` on 127.0.0.1 and
/// fetched by the guest through QEMU's user-mode gateway (10.0.2.2). No Windows guest runs here, so the guest is the
/// Debian reference image fetching with curl, and its sha256 is checked as Kiln checks it.
struct UploadBenchmark {
    var mib: Int
    var rounds: Int

    func run() async throws(KilnError) {
        let state = StateDirectory(explicit: try PrivateDirectory.makeTemporary(prefix: "kiln-bench-"))
        defer { try? FileManager.default.removeItem(atPath: state.path) }
        let payload = state.path + "/payload.bin"
        var bytes = [UInt8](repeating: 0, count: mib << 20)
        for index in bytes.indices { bytes[index] = UInt8.random(in: 0...255) }
        guard FileManager.default.createFile(atPath: payload, contents: Data(bytes)) else { throw KilnError(.io, "cannot write \(payload)") }
        let expected = try SHA256Digest.hex(ofFile: payload)

        let catalog = try ImageCatalog.locate(state: state)
        let image = try await catalog.resolve(reference: "Debian:debian-12:12")
        let decision = await AcceleratorProbe.decide(.auto, cacheDirectory: KilnCache.path())
        print("upload benchmark: \(mib) MiB through the user-mode gateway into \(image.displayName), \(decision.accelerator.rawValue)")
        let runID = RunID.make()
        let options = MachineOptions(runID: runID, source: image, size: try VMSize.named("Standard_D2s_v3"), accelerator: decision.accelerator,
                                     runDirectory: state.runsPath + "/" + runID, stateDirectory: state)
        let vm = try await BuildMachine.boot(options) { _ in }
        do throws(KilnError) {
            let session = try await vm.waitForGuest(timeout: .seconds(1200))
            print("round  seconds  MiB/s  sha256")
            var times: [Double] = []
            for round in 1...rounds {
                let share = try LoopbackFileShare(path: payload)
                let clock = ContinuousClock()
                let start = clock.now
                let output = try await session.run("curl -sf -o /tmp/payload http://10.0.2.2:\(share.port)/\(share.token) && sha256sum /tmp/payload && rm -f /tmp/payload")
                let seconds = (clock.now - start).inSeconds
                share.stop()
                let actual = String(output.prefix(64))
                guard actual == expected else { throw KilnError(.checksumMismatch, "round \(round): the guest's copy has sha256 \(actual), expected \(expected)") }
                times.append(seconds)
                print(String(format: "%5d  %7.2f  %5.1f  ok", round, seconds, Double(mib) / seconds))
            }
            await session.close()
            await vm.teardown(keepFiles: false)
            let mean = times.reduce(0, +) / Double(times.count)
            print(String(format: "mean %.2f s for %d MiB (target: 20 MB in under 30 s on a real host)", mean, mib))
        } catch {
            await vm.teardown(keepFiles: false)
            throw error
        }
    }
}
