import Foundation
import KilnBuild
import KilnGuest
import KilnMachine
import KilnSupport

/// Boot-to-SSH: how long Kiln takes from start to the first command in the guest, against the guest's own boot
/// time as systemd reports it. Kiln's overhead is the difference.
struct BootBenchmark {
    var urn: String
    var runs: Int
    var size: String

    static let header = "run  prepare  to-first-exec  firmware+loader  guest-kernel  guest-userspace  guest-total  overhead  sshd-listening  login-after-sshd  kiln-overhead  libguestfs-launches  ready-report"

    struct Row {
        var toFirstExec: Double
        var overhead: Double
        var kilnOverhead: Double
        var line: String
    }

    func run() async throws(KilnError) {
        let state = StateDirectory(explicit: try PrivateDirectory.makeTemporary(prefix: "kiln-bench-"))
        defer { try? FileManager.default.removeItem(atPath: state.path) }
        let catalog = try ImageCatalog.locate(state: state)
        let image = try await catalog.resolve(reference: urn)
        let decision = await AcceleratorProbe.decide(.auto, cacheDirectory: KilnCache.path())
        print("boot benchmark: \(image.displayName), \(size), \(decision.accelerator.rawValue) (\(decision.evidence))")
        print(Self.header)
        var rows: [Row] = []
        for index in 1...runs {
            let row = try await Self.bootOnce(image, index: index, size: size, accelerator: decision.accelerator, state: state)
            print(row.line)
            rows.append(row)
        }
        let mean = rows.map(\.overhead).reduce(0, +) / Double(rows.count)
        let kilnMean = rows.map(\.kilnOverhead).reduce(0, +) / Double(rows.count)
        print(String(format: "mean kiln-overhead (Kiln's preparation + the time from sshd being up to the first command): %.1fs (target < 3s)", kilnMean))
        print(String(format: "mean overhead against systemd-analyze's total (coarse: counts firmware and loader as Kiln's, and the total includes cloud-init stages that end after SSH is usable): %.1fs", mean))
    }

    /// One boot of `image` to its first command, measured with the guest's own clocks.
    static func bootOnce(_ image: SourceImage, index: Int, size: String, accelerator: Accelerator, state: StateDirectory) async throws(KilnError) -> Row {
        let clock = ContinuousClock()
        let start = clock.now
        let runID = RunID.make()
        let options = MachineOptions(runID: runID, source: image, size: try VMSize.named(size), accelerator: accelerator,
                                     runDirectory: state.runsPath + "/" + runID, stateDirectory: state)
        let vm = try await BuildMachine.boot(options) { _ in }
        let prepared = clock.now - start
        do throws(KilnError) {
            let session = try await vm.waitForGuest(timeout: .seconds(1200))
            // The first command reads the guest's uptime: how long ago its kernel started.
            let uptimeText = try await session.run("cat /proc/uptime")
            let toFirstExec = clock.now - start
            let uptime = Double(uptimeText.split(separator: " ").first ?? "") ?? 0
            // The guest's view, once boot has finished.
            _ = try await session.exec("systemctl is-system-running --wait")
            let analyze = try await session.run("systemd-analyze")
            // When sshd first listened, from the journal: ssh.service's own timestamps give its latest start, and
            // cloud-init may restart sshd after the first login already worked.
            let listening = try await session.run("sudo -n journalctl -b -u ssh -o short-monotonic --no-pager | grep -m1 'Server listening'")
            let times = SystemdAnalyze.parse(analyze)
            let sshActiveSeconds = Double(listening.drop(while: { $0 == "[" || $0 == " " }).prefix(while: { $0 != "]" })) ?? 0
            let firstExec = toFirstExec.inSeconds
            let overhead = firstExec - times.total
            // Host seconds from Kiln's start to the guest kernel's start, minus Kiln's own preparation: QEMU's
            // start, the firmware and the boot loader, which the guest's clock does not see.
            let firmware = firstExec - uptime - prepared.inSeconds
            // Guest seconds from sshd being up to Kiln's first command running.
            let loginAfterSSHD = uptime - sshActiveSeconds
            let kilnOverhead = prepared.inSeconds + loginAfterSSHD
            let launches = vm.inspection == nil ? 0 : 1
            // Presented as Azure: when the guest's agent reported Ready to the wireserver, in seconds after its
            // kernel started (the agent's own provisioning, which Kiln waits for before the first login).
            let kernelStarted = firstExec - uptime
            let ready = vm.fabric?.readyReportedAt.map { String(format: "%11.1fs", ($0 - start).inSeconds - kernelStarted) } ?? "          -"
            let line = String(format: "%3d  %6.2fs  %12.1fs  %14.1fs  %11.1fs  %15.1fs  %10.1fs  %7.1fs  %17.1fs  %15.1fs  %12.1fs  %18d  ", index,
                              prepared.inSeconds, firstExec, firmware, times.kernel, times.userspace, times.total, overhead,
                              sshActiveSeconds, loginAfterSSHD, kilnOverhead, launches) + ready
            await session.close()
            await vm.teardown(keepFiles: false)
            return Row(toFirstExec: firstExec, overhead: overhead, kilnOverhead: kilnOverhead, line: line)
        } catch {
            await vm.teardown(keepFiles: false)
            throw error
        }
    }
}

/// Start to first exec for each way a Linux image gets its build user, in one run: the reference image (NoCloud
/// seed), the same image with cloud-init reading only the Azure datasource, and with the Azure Linux agent alone
/// (both presented as Azure), alternated so that all see the same machine load. The guest's own boot and its agent's work are in the columns.
struct ProvisioningBootBenchmark {
    var runs: Int
    var size: String

    func run() async throws(KilnError) {
        let state = StateDirectory(explicit: try PrivateDirectory.makeTemporary(prefix: "kiln-bench-"))
        defer { try? FileManager.default.removeItem(atPath: state.path) }
        let catalog = try ImageCatalog.locate(state: state)
        let reference = try await catalog.resolve(reference: "Debian:debian-12:12")
        // The checkout's build script, found as the catalog is (beside the executable), not in the working directory.
        guard let buildScript = catalog.buildScript else {
            throw KilnError(.notFound, "expected scripts/build-image beside the image catalog \(catalog.catalogPath ?? "(none found above the executable; set KILN_CATALOG)"), found none")
        }
        func recipe(_ name: String, _ provisioning: LinuxProvisioning) async throws(KilnError) -> SourceImage {
            let built = try await Subprocess.run(buildScript, [name], timeout: .seconds(3600))
            guard built.succeeded, let path = built.stdoutText.split(separator: "\n").last.map(String.init) else {
                throw KilnError(.external, "\(buildScript) \(name) failed: \(built.stderrText.suffix(1000))")
            }
            var image = try await catalog.resolve(reference: path)
            image.provisioning = provisioning
            image.hasCloudInit = true
            return image
        }
        let decision = await AcceleratorProbe.decide(.auto, cacheDirectory: KilnCache.path())
        var waagent = try await recipe("debian-12-waagent", .waagent)
        // As `kiln image import` does once per image: the agent's leases in a layer the builds boot on.
        let clock = ContinuousClock()
        let importStart = clock.now
        let (_, layer) = try await LeaseLayer.inspect(source: waagent.path, format: waagent.format, path: state.path + "/waagent.lease-layer.qcow2",
                                                      accelerator: decision.accelerator)
        guard let layer else { throw KilnError(.invalidState, "expected the debian-12-waagent image to need the agent's leases, found it does not") }
        waagent.leaseLayer = layer
        let variants: [(String, SourceImage)] = [("cloud-init-nocloud", reference),
                                                 ("cloud-init-azure", try await recipe("debian-12-azure", .azure)),
                                                 ("waagent-azure", waagent)]
        print("provisioning boot benchmark: \(size), \(decision.accelerator.rawValue), \(runs) runs each, alternated")
        print(String(format: "waagent-azure: import's inspection with the lease layer (once per image, not per build): %.1fs", (clock.now - importStart).inSeconds))
        print("variant             " + BootBenchmark.header)
        var firstExec: [String: [Double]] = [:]
        for index in 1...runs {
            for (name, image) in variants {
                let row = try await BootBenchmark.bootOnce(image, index: index, size: size, accelerator: decision.accelerator, state: state)
                print(name.padding(toLength: 20, withPad: " ", startingAt: 0) + row.line)
                firstExec[name, default: []].append(row.toFirstExec)
            }
        }
        let means = variants.map { name, _ in (name, (firstExec[name] ?? []).reduce(0, +) / Double(max(1, firstExec[name]?.count ?? 0))) }
        let base = means.first?.1 ?? 1
        for (name, mean) in means {
            print(String(format: "%@: mean to-first-exec %.1fs (%.2f × cloud-init-nocloud; target ≤ 1.10)", name, mean, mean / base))
        }
    }
}

/// "Startup finished in 2.1s (kernel) + 20.0s (userspace) = 22.1s" (also with firmware/loader, and minutes).
enum SystemdAnalyze {
    struct Times { var kernel = 0.0, userspace = 0.0, total = 0.0 }

    static func parse(_ text: String) -> Times {
        var times = Times()
        guard let line = text.split(separator: "\n").first(where: { $0.contains("Startup finished") }) else { return times }
        let parts = line.replacingOccurrences(of: "Startup finished in ", with: "").split(separator: "=")
        for term in parts.first?.split(separator: "+") ?? [] {
            let words = term.trimmingCharacters(in: .whitespaces)
            let value = duration(String(words.split(separator: " ").first ?? ""))
            if words.contains("(kernel)") { times.kernel = value }
            if words.contains("(userspace)") { times.userspace = value }
        }
        times.total = duration(parts.last.map { String($0).trimmingCharacters(in: .whitespaces) } ?? "")
        return times
    }

    /// "1min 2.5s", "22.1s", "850ms".
    static func duration(_ text: String) -> Double {
        var total = 0.0
        for token in text.split(separator: " ") {
            if token.hasSuffix("ms"), let value = Double(token.dropLast(2)) { total += value / 1000 }
            else if token.hasSuffix("min"), let value = Double(token.dropLast(3)) { total += value * 60 }
            else if token.hasSuffix("s"), let value = Double(token.dropLast()) { total += value }
        }
        return total
    }
}
