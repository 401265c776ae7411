import ArgumentParser
import Foundation
import KilnGuestfs
import KilnLibvirt
import KilnMachine
import KilnSupport

struct DoctorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check everything Kiln needs on this host and say how to fix what is missing."
    )

    @OptionGroup var machine: MachineFlags

    @Flag(help: "Probe the accelerator again instead of using this boot's cached answer.")
    var reprobe = false

    @Flag(help: "Skip the libguestfs appliance launch (~25 s under TCG).")
    var skipGuestfs = false

    struct Check {
        var name: String
        var ok: Bool
        var detail: String
        var fix: String?
    }

    func run() async throws {
        let state = machine.state
        var checks: [Check] = []
        func add(_ check: Check) {
            checks.append(check)
            let mark = check.ok ? "ok  " : "FAIL"
            print("[\(mark)] \(check.name): \(check.detail)")
            if !check.ok, let fix = check.fix { print("       fix: \(fix)") }
        }

        do {
            add(Check(name: "libvirt", ok: true, detail: "library \(try Libvirt.libraryVersion())"))
        } catch {
            add(Check(name: "libvirt", ok: false, detail: error.message, fix: "scripts/install-deps (libvirt-daemon-driver-qemu, libvirt-dev)"))
        }
        do {
            let uri: String
            if let explicit = machine.libvirtURI { uri = explicit } else { uri = try EmbeddedDriver.processURI() }
            let connection = try await LibvirtConnection.open(uri)
            _ = try await connection.runningDomainNames()
            await connection.close()
            add(Check(name: "libvirt connection", ok: true, detail: machine.libvirtURI == nil ? "embedded QEMU driver opens (no daemon)" : "\(uri) opens"))
        } catch {
            add(Check(name: "libvirt connection", ok: false, detail: error.message,
                      fix: "scripts/install-deps (it also creates the libvirt-qemu account the embedded driver looks up)"))
        }

        if let result = try? await Subprocess.run("qemu-system-x86_64", ["--version"], timeout: .seconds(20)), result.succeeded {
            add(Check(name: "qemu", ok: true, detail: result.stdoutText.split(separator: "\n").first.map(String.init) ?? "present"))
        } else {
            add(Check(name: "qemu", ok: false, detail: "qemu-system-x86_64 not found", fix: "apt-get install qemu-system-x86"))
        }
        // socat joins a Linux guest's connections to Azure's addresses to Kiln's fabric (docs/azure-presentation.md).
        for tool in ["qemu-img", "xorriso", "socat"] {
            let found = Subprocess.find(tool)
            add(Check(name: tool, ok: found != nil, detail: found ?? "not found", fix: "scripts/install-deps"))
        }

        if reprobe { try? FileManager.default.removeItem(atPath: state.path + "/accelerator.json") }
        let decision = await AcceleratorProbe.decide(machine.accel, cacheDirectory: state.path)
        add(Check(name: "accelerator", ok: true, detail: "\(decision.accelerator.rawValue): \(decision.evidence)"))

        let kernel = AcceleratorProbe.hostKernel()
        add(Check(name: "kernel under /boot", ok: kernel != nil && access(kernel ?? "", R_OK) == 0, detail: kernel ?? "none",
                  fix: "apt-get install linux-image-amd64 (libguestfs's appliance and the KVM probe boot it)"))

        if skipGuestfs {
            add(Check(name: "libguestfs appliance", ok: true, detail: "not launched (--skip-guestfs)"))
        } else {
            let clock = ContinuousClock()
            let start = clock.now
            let outcome: Result<Void, KilnError>
            do throws(KilnError) {
                outcome = .success(try await Blocking.run { () throws(KilnError) in
                    let handle = try GuestfsHandle()
                    defer { handle.close() }
                    if decision.accelerator == .tcg { try handle.setBackendSettings(["force_tcg"]) }
                    try handle.setBackend("direct")
                    // libguestfs refuses to launch without a drive; /dev/null is the usual empty one.
                    try handle.addDrive("/dev/null", format: "raw", readOnly: true)
                    try handle.launch()
                    try handle.finish()
                })
            } catch {
                outcome = .failure(error)
            }
            switch outcome {
            case .success: add(Check(name: "libguestfs appliance", ok: true, detail: "launched and shut down in \(DurationText.format(clock.now - start)) (\(decision.accelerator.rawValue))"))
            case .failure(let error): add(Check(name: "libguestfs appliance", ok: false, detail: error.message,
                                               fix: "scripts/install-deps; run libguestfs-test-tool with LIBGUESTFS_BACKEND_SETTINGS=force_tcg for details"))
            }
        }

        let ovmf = [DomainSpec.ovmfCode, DomainSpec.ovmfVarsTemplate].filter { !FileManager.default.fileExists(atPath: $0) }
        add(Check(name: "OVMF (UEFI, Gen2 images)", ok: ovmf.isEmpty, detail: ovmf.isEmpty ? DomainSpec.ovmfCode : "missing \(ovmf.joined(separator: ", "))",
                  fix: "apt-get install ovmf"))

        _ = try? state.create()
        var stats = statvfs()
        if statvfs(state.path, &stats) == 0 {
            let freeGiB = Double(stats.f_bavail) * Double(stats.f_frsize) / Double(1 << 30)
            add(Check(name: "disk space", ok: freeGiB >= 10, detail: String(format: "%.1f GiB free under %@", freeGiB, state.path),
                      fix: "free space or choose another --state-dir / KILN_STATE_DIR (builds need overlays and VHD outputs)"))
        }

        if let catalog = try? ImageCatalog.locate(state: state) {
            let built = catalog.records().count
            add(Check(name: "source images", ok: true, detail: "\(catalog.entries.count) catalog recipes (\(catalog.catalogPath ?? "no catalog")), \(built) images ready"))
        }

        let failures = checks.filter { !$0.ok }.count
        print(failures == 0 ? "all \(checks.count) checks passed" : "\(failures) of \(checks.count) checks failed")
        if failures > 0 { throw ExitCode.failure }
    }
}
