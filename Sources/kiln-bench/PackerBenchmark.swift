import Foundation
import KilnBuild
import KilnGuest
import KilnMachine
import KilnSSH
import KilnSupport

/// The same Linux template built by Kiln and by Packer 1.6.6's qemu builder (Debian's package), timed alternately:
/// same source image, same accelerator, same VM size, the same shell steps and deprovisioning, both ending in a
/// fixed VHD (Packer's qcow2 converted with qemu-img, as an AIB user would have to).
struct PackerBenchmark {
    var rounds: Int
    /// Cold: Kiln ignores its build cache. Warm source: the cache holds the source's boot checkpoint (written once,
    /// before timing, by a build of another template), as on a lab host that has built from this image before;
    /// each timed template differs from everything cached, so every customizer, the deprovisioning, the shutdown
    /// and the VHD are done again and only the boot is skipped.
    var warmSource: Bool = false

    static let steps: [[String]] = [
        ["sudo mkdir -p /opt/bench", "for i in $(seq 1 200); do echo line $i | sudo tee -a /opt/bench/log >/dev/null; done"],
        ["sudo dd if=/dev/urandom of=/opt/bench/blob bs=1M count=64 status=none", "sha256sum /opt/bench/blob"],
        ["echo done | sudo tee /opt/bench/marker"],
    ]

    static let deprovision = "sudo -n /bin/sh -c 'WAAGENT=/usr/sbin/waagent; waagent -version 1> /dev/null 2>&1; if [ $? -eq 0 ]; then WAAGENT=waagent; fi; $WAAGENT -force -deprovision+user && export HISTSIZE=0 && sync'"

    func run() async throws(KilnError) {
        let work = try PrivateDirectory.makeTemporary(prefix: "kiln-bench-packer-")
        defer { try? FileManager.default.removeItem(atPath: work) }
        let state = StateDirectory(explicit: work + "/state")
        let image = try await ImageCatalog.locate(state: state).resolve(reference: "Debian:debian-12:12")
        guard Subprocess.find("packer") != nil else { throw KilnError(.notFound, "packer is not installed (apt-get install packer)") }
        let version = (try? await Subprocess.run("packer", ["version"]))?.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
        let decision = await AcceleratorProbe.decide(.auto, cacheDirectory: KilnCache.path())
        print("build benchmark: Kiln vs \(version) qemu builder; \(image.displayName); Standard_D2s_v3 (2 vCPU, 8 GiB); \(decision.accelerator.rawValue); "
              + (warmSource ? "Kiln with the source's boot checkpoint in its cache (warm source)" : "Kiln cold (no cache)"))
        if warmSource {
            let primer = work + "/primer"
            try? FileManager.default.createDirectory(atPath: primer, withIntermediateDirectories: true)
            try? benchTemplate(steps: [["echo primer"]], size: "Standard_D2s_v3", vhdURI: primer + "/primer.vhd")
                .write(toFile: primer + "/template.json", atomically: true, encoding: .utf8)
            let clock = ContinuousClock()
            let start = clock.now
            let result = await BuildEngine(BuildRequest(templatePath: primer + "/template.json", state: state, useCache: false)) { _ in }.run()
            guard result.record.runState == .succeeded else { throw KilnError(.external, "the priming build failed: \(result.record.message)") }
            try? FileManager.default.removeItem(atPath: primer)
            print(String(format: "primed: a one-step build of another template wrote the boot checkpoint in %.1fs (not counted)", (clock.now - start).inSeconds))
        }
        print("round  kiln      packer    ratio")
        var kilnTimes: [Double] = []
        var packerTimes: [Double] = []
        for round in 1...rounds {
            let kiln = try await timeKiln(work: work + "/kiln-\(round)", state: state, round: round)
            let packer = try await timePacker(work: work + "/packer-\(round)", image: image, accelerator: decision.accelerator)
            kilnTimes.append(kiln)
            packerTimes.append(packer)
            print(String(format: "%5d  %6.1fs  %6.1fs  %.2f", round, kiln, packer, kiln / packer))
        }
        let kilnMean = kilnTimes.reduce(0, +) / Double(rounds)
        let packerMean = packerTimes.reduce(0, +) / Double(rounds)
        print(String(format: "mean   %6.1fs  %6.1fs  %.2f  (target: Kiln ≤ 0.80 × Packer)", kilnMean, packerMean, kilnMean / packerMean))
    }

    private func timeKiln(work: String, state: StateDirectory, round: Int) async throws(KilnError) -> Double {
        try? FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        let path = work + "/template.json"
        // Warm source: a marker unique to this round makes the first step, and so every step, new to the cache.
        var steps = PackerBenchmark.steps
        if warmSource { steps[0].insert("echo round \(round) \(UUID().uuidString)", at: 0) }
        try? benchTemplate(steps: steps, size: "Standard_D2s_v3", vhdURI: work + "/kiln.vhd").write(toFile: path, atomically: true, encoding: .utf8)
        let clock = ContinuousClock()
        let start = clock.now
        // Cold: the build cache is ignored (it would let later rounds skip the boot and every unchanged step).
        let result = await BuildEngine(BuildRequest(templatePath: path, state: state, useCache: warmSource)) { _ in }.run()
        let elapsed = (clock.now - start).inSeconds
        guard result.record.runState == .succeeded else { throw KilnError(.external, "the Kiln build failed: \(result.record.message)") }
        if warmSource {
            guard result.record.resumedFrom?.contains("boot") == true, result.record.reusedSteps?.isEmpty != false else {
                throw KilnError(.external, "the warm-source build did not resume from the boot checkpoint alone: resumedFrom \(result.record.resumedFrom ?? "none"), reused \(result.record.reusedSteps ?? [])")
            }
        }
        try? FileManager.default.removeItem(atPath: result.runDirectory)
        return elapsed
    }

    private func timePacker(work: String, image: SourceImage, accelerator: Accelerator) async throws(KilnError) -> Double {
        try? FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        // The same credentials mechanism as Kiln: a NoCloud seed with the build user and a fresh key.
        let keyPair = SSHKeyPair()
        let keyPath = work + "/id_ed25519"
        try SecretFile.write(Data(keyPair.openSSHPrivateKeyFile(comment: "bench").utf8), to: keyPath)
        let seed = work + "/seed.iso"
        try await CloudInitSeed.write(to: seed, credentials: BuildCredentials(username: "packer", authorizedKey: keyPair.openSSHPublicKey(comment: "bench")),
                                      instanceID: "bench-\(UUID().uuidString)", hostname: "packer-bench")
        let output = work + "/output"
        let provisioners = (PackerBenchmark.steps.map { lines -> [String: Any] in
            ["type": "shell", "inline": lines]
        } + [["type": "shell", "inline": [PackerBenchmark.deprovision]] as [String: Any]])
        let config: [String: Any] = [
            "builders": [[
                "type": "qemu", "iso_url": image.path, "iso_checksum": "none", "disk_image": true, "format": "qcow2",
                "accelerator": accelerator.rawValue, "headless": true, "memory": 8192, "cpus": 2,
                "disk_interface": "virtio", "net_device": "virtio-net", "output_directory": output, "vm_name": "disk.qcow2",
                "communicator": "ssh", "ssh_username": "packer", "ssh_private_key_file": keyPath, "ssh_timeout": "20m",
                "shutdown_command": "sudo -n poweroff",
                // The seed must be a virtio disk (cloud-init looks before CD-ROM drivers load); overriding -drive drops
                // Packer's own, so the OS disk is given again exactly as Packer would.
                "qemuargs": [["-drive", "file=\(output)/disk.qcow2,if=virtio,cache=writeback,discard=ignore,format=qcow2"],
                             ["-drive", "file=\(seed),if=virtio,format=raw,readonly=on"]],
            ] as [String: Any]],
            "provisioners": provisioners,
        ]
        let configPath = work + "/packer.json"
        guard let data = try? JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted]),
              FileManager.default.createFile(atPath: configPath, contents: data) else {
            throw KilnError(.io, "cannot write \(configPath)")
        }
        let clock = ContinuousClock()
        let start = clock.now
        let result = try await Subprocess.run("packer", ["build", "-force", configPath], timeout: .seconds(3600),
                                              environment: ["PACKER_LOG": "0", "CHECKPOINT_DISABLE": "1", "PACKER_CACHE_DIR": work + "/packer_cache"])
        guard result.succeeded else {
            throw KilnError(.external, "packer build failed: \(result.stdoutText.suffix(1500)) \(result.stderrText.suffix(500))")
        }
        try await Subprocess.check("qemu-img", ["convert", "-q", "-f", "qcow2", "-O", "vpc", "-o", "subformat=fixed,force_size",
                                               output + "/disk.qcow2", work + "/packer.vhd"], timeout: .seconds(3600))
        let elapsed = (clock.now - start).inSeconds
        try? FileManager.default.removeItem(atPath: work)
        return elapsed
    }
}

/// A Debian 12 template of inline Shell steps (one per list of lines, named step0…) and one VHD target.
func benchTemplate(steps: [[String]], size: String, vhdURI: String? = nil) -> String {
    let customize = steps.enumerated().map { index, lines in
        "{\"type\": \"Shell\", \"name\": \"step\(index)\", \"inline\": [" + lines.map { "\"\(jsonEscape($0))\"" }.joined(separator: ", ") + "]}"
    }.joined(separator: ",\n")
    let uri = vhdURI.map { ", \"uri\": \"\($0)\"" } ?? ""
    return """
    {"type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-07-01", "location": "westus2",
     "identity": {"type": "UserAssigned", "userAssignedIdentities": {"/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourcegroups/id/providers/Microsoft.ManagedIdentity/userAssignedIdentities/builder": {}}},
     "properties": {"vmProfile": {"vmSize": "\(size)"},
       "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12", "version": "latest"},
       "customize": [\(customize)],
       "distribute": [{"type": "VHD", "runOutputName": "bench"\(uri)}]}}
    """
}

func jsonEscape(_ text: String) -> String {
    text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
}
