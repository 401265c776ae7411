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

    /// A build VM takes 2 GiB unless its template's vmSize says more.
    static let minimumFreeMemoryBytes: UInt64 = 2 << 30
    /// As for the state directory on this machine: room for an overlay and a VHD output.
    static let minimumPoolBytes: UInt64 = 10 << 30

    struct Check {
        var name: String
        var ok: Bool
        var detail: String
        var fix: String?
    }

    func run() async throws {
        do { try machine.requireOneHost("kiln doctor") } catch { throw fail(error) }
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
        do throws(KilnError) {
            let uri: String
            if let explicit = machine.libvirtURI { uri = explicit } else { uri = try EmbeddedDriver.processURI() }
            let connection = try await LibvirtConnection.open(uri)
            do throws(KilnError) {
                _ = try await connection.runningDomainNames()
            } catch {
                await connection.close()
                throw error
            }
            add(Check(name: "libvirt connection", ok: true, detail: machine.libvirtURI == nil ? "embedded QEMU driver opens (no daemon)" : "\(uri) opens"))
            // The host behind --connect (for qemu+ssh://, another machine), through the same connection.
            if machine.libvirtURI != nil {
                for check in await hostChecks(connection, uri: uri) { add(check) }
            }
            await connection.close()
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
        // The probe boots on this machine's embedded driver; a host behind --connect is not probed (yet).
        add(Check(name: machine.libvirtURI == nil ? "accelerator" : "accelerator (this machine)", ok: true,
                  detail: "\(decision.accelerator.rawValue): \(decision.evidence)"))

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

    /// What the host behind `--connect` says of itself: its QEMU, free memory and the pool's free space.
    func hostChecks(_ connection: LibvirtConnection, uri: String) async -> [Check] {
        var checks: [Check] = []
        do {
            let facts = try await connection.hostFacts()
            checks.append(Check(name: "host", ok: true, detail: "\(facts.hostname): libvirt \(facts.libvirtVersion), \(facts.hypervisor) \(facts.hypervisorVersion)"))
            checks.append(Check(name: "host memory", ok: facts.freeMemoryBytes >= Self.minimumFreeMemoryBytes,
                                detail: String(format: "%.1f GiB free", Double(facts.freeMemoryBytes) / Double(1 << 30)),
                                fix: "a build VM needs at least 2 GiB: free memory on the host or build elsewhere"))
            // What a build there decides with --accel auto (RemoteHost.acceleratorDecision): the host's libvirt's word.
            let kvm = await connection.offersKVM()
            checks.append(Check(name: "host accelerator", ok: true,
                                detail: kvm ? "kvm: its libvirt offers KVM domains (--accel tcg if its guests hang)" : "tcg: its libvirt offers no KVM domains"))
        } catch {
            checks.append(Check(name: "host", ok: false, detail: error.message, fix: "check that libvirt's QEMU driver runs on the host"))
        }
        do {
            let pool = try await connection.storagePool(named: machine.pool)
            // Measured now, not when libvirt last looked (files come and go behind its back). A refresh is refused
            // while a volume is being built there; the last measure then still answers.
            try? await pool.refresh()
            let space = try await pool.space()
            checks.append(Check(name: "pool \(machine.pool)", ok: space.availableBytes >= Self.minimumPoolBytes,
                                detail: String(format: "%.1f GiB free of %.1f GiB", Double(space.availableBytes) / Double(1 << 30),
                                               Double(space.capacityBytes) / Double(1 << 30)),
                                fix: "builds need about 10 GiB there: free space in the pool's directory on the host, or name another pool with --pool"))
        } catch {
            let virsh = "virsh -c \(ShellQuote.quote(uri))", name = ShellQuote.quote(machine.pool)
            checks.append(Check(name: "pool \(machine.pool)", ok: false, detail: error.message,
                                fix: error.code == .notFound
                                    ? "\(virsh) pool-define-as \(name) dir --target /var/lib/libvirt/kiln && \(virsh) pool-build \(name) && \(virsh) pool-start \(name) && \(virsh) pool-autostart \(name)"
                                    : nil))
        }
        return checks
    }
}
