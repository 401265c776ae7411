import Foundation
import KilnBuild
import KilnDigest
import KilnGuest
import KilnMachine
import KilnSupport
import KilnTestSupport
import Testing

@Suite("Boot and connect (real VMs)", .serialized, .vmSlot, .enabled(if: VMTestEnvironment.enabled))
struct BootAndConnectTests {
    /// One boot per reference image exercising exec, exit codes and signals, a 50 MB upload, a reboot with
    /// reconnect, and shutdown; afterwards nothing is left and the source is unchanged.
    @Test("a VM boots, runs commands, takes uploads, survives a reboot and shuts down", arguments: ["Debian:debian-12:12", "Debian:debian-12:12-gen2"])
    func fullLifecycle(urn: String) async throws {
        let state = VMTestEnvironment.makeStateDirectory()
        defer { try? FileManager.default.removeItem(atPath: state.path) }
        let events = EventLog()
        let image = try await VMTestEnvironment.catalog(state).resolve(reference: urn)
        let sourceSumBefore = try SHA256Digest.hex(ofFile: image.path)
        let runID = RunID.make()
        let options = MachineOptions(runID: runID, source: image, size: try VMSize.named("Standard_D2s_v3"), osDiskSizeGB: 6,
                                     accelerator: await VMTestEnvironment.accelerator(), runDirectory: state.runsPath + "/" + runID,
                                     stateDirectory: state)
        let vm = try await BuildMachine.boot(options) { events($0) }
        do {
            let session = try await vm.waitForGuest(timeout: .seconds(600))

            // exec: streamed output, exit status, stderr, sudo, the grown disk.
            let collector = OutputCollector()
            let result = try await session.exec("echo out; echo err >&2; id -un; sudo -n id -u; lsblk -b -dn -o SIZE /dev/vda; exit 7") { collector.append($0) }
            #expect(result.outcome == .exited(7))
            #expect(collector.stdoutText == "out\n\(vm.username)\n0\n\(6 << 30)\n")
            #expect(collector.stderrText == "err\n")
            #expect(try await session.exec("true").outcome == .exited(0))
            #expect(try await session.exec("exit 255").outcome == .exited(255))
            #expect(try await session.exec("kill -TERM $$").outcome == .signaled("TERM"))
            #expect(try await session.exec("kill -KILL $$").outcome == .signaled("KILL"))
            let firmware = try await session.run("test -d /sys/firmware/efi && echo uefi || echo bios")
            #expect(firmware == (image.firmware == .uefi ? "uefi\n" : "bios\n"))
            // stdin reaches the command.
            let echoed = OutputCollector()
            _ = try await session.exec("cat", stdin: Array("piped input".utf8)) { echoed.append($0) }
            #expect(echoed.stdoutText == "piped input")

            // upload: 50 MB, byte for byte.
            let local = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-upload-\(runID)").path
            defer { try? FileManager.default.removeItem(atPath: local) }
            var bytes = [UInt8](repeating: 0, count: 50 * 1024 * 1024)
            for index in stride(from: 0, to: bytes.count, by: 4096) { bytes[index] = UInt8(truncatingIfNeeded: index / 4096 &* 7) }
            #expect(FileManager.default.createFile(atPath: local, contents: Data(bytes)))
            try await session.upload(localPath: local, remotePath: "/tmp/upload.bin")
            let remoteSum = try await session.run("sha256sum /tmp/upload.bin | cut -d' ' -f1")
            #expect(remoteSum.trimmingCharacters(in: .whitespacesAndNewlines) == (try SHA256Digest.hex(ofFile: local)))

            // reboot: the connection drops, a new one gets in with the same pinned host key and a new boot ID.
            let bootBefore = try await session.run("cat /proc/sys/kernel/random/boot_id")
            let reboot = try await session.exec("sudo -n systemctl reboot; sleep 600")
            if case .disconnected = reboot.outcome {} else { Issue.record("expected the reboot to drop the connection, got \(reboot)") }
            await session.close()
            // A login can still reach the old boot's sshd while the guest goes down: retry until the boot ID changes,
            // as the build does after a step that reboots.
            var again = try await vm.waitForGuest(timeout: .seconds(600))
            var bootAfter = (try? await again.run("cat /proc/sys/kernel/random/boot_id")) ?? bootBefore
            let deadline = ContinuousClock.now + .seconds(600)
            while bootAfter == bootBefore && ContinuousClock.now < deadline {
                await again.close()
                try await Task.sleep(for: .seconds(2))
                again = try await vm.waitForGuest(timeout: .seconds(600))
                bootAfter = (try? await again.run("cat /proc/sys/kernel/random/boot_id")) ?? bootBefore
            }
            #expect(bootAfter != bootBefore)
            #expect(vm.hostKeyPin.pinnedKey != nil)

            // shutdown: the guest powers itself off in time.
            let graceful = await vm.shutdown(session: again, timeout: .seconds(180))
            #expect(graceful)
            #expect(await vm.isRunning() == false)
        } catch {
            Issue.record("events:\n\(events.all.joined(separator: "\n"))\nconsole:\n\(vm.consoleTail(lines: 30))")
            await vm.teardown(keepFiles: false)
            throw error
        }
        await vm.teardown(keepFiles: false)
        #expect(VMTestEnvironment.qemuProcesses(named: options.domainName).isEmpty)
        #expect(!FileManager.default.fileExists(atPath: vm.overlayPath))
        #expect(!FileManager.default.fileExists(atPath: vm.seedPath))
        #expect(!FileManager.default.fileExists(atPath: vm.privateKeyPath))
        #expect(try SHA256Digest.hex(ofFile: image.path) == sourceSumBefore)
    }

    @Test("kiln vm exec streams the command's output and exits with its status; offline credentials need no cloud-init seed")
    func vmExecOffline() async throws {
        let state = VMTestEnvironment.makeStateDirectory()
        defer { try? FileManager.default.removeItem(atPath: state.path) }
        let result = try await KilnExecutable.run(
            ["vm", "exec", "Debian:debian-12:12", "--state-dir", state.path, "--inject", "offline", "--",
             "echo hello from $(id -un); sudo -n true && echo sudo-ok; test -e /dev/vdb || echo no-seed; exit 42"],
            environment: ["KILN_CATALOG": VMTestEnvironment.repositoryRoot.appendingPathComponent("images/catalog.json").path])
        #expect(result.status == 42, "\(result.stderr)")
        #expect(result.stdout == "hello from packer\nsudo-ok\nno-seed\n")
        #expect(result.stderr.contains("written offline"))
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: state.runsPath)) ?? []).isEmpty)
        #expect(!result.stderr.contains("warning :"), "libvirt's own log stays off the terminal")
    }

    /// A disk with an MBR signature and no boot code: the firmware starts it, nothing ever answers.
    static func noSSHDisk(in state: StateDirectory) throws -> String {
        let disk = state.path + "/nossh.raw"
        var bytes = [UInt8](repeating: 0, count: 16 << 20)
        bytes[510] = 0x55
        bytes[511] = 0xAA
        #expect(FileManager.default.createFile(atPath: disk, contents: Data(bytes)))
        return disk
    }

    @Test("a disk with nothing listening on SSH fails the wait clearly and is torn down")
    func noSSHServer() async throws {
        let state = VMTestEnvironment.makeStateDirectory()
        defer { try? FileManager.default.removeItem(atPath: state.path) }
        let disk = try Self.noSSHDisk(in: state)
        let image = try await VMTestEnvironment.catalog(state).resolve(reference: disk)
        #expect(image.format == "raw")
        let runID = RunID.make()
        let options = MachineOptions(runID: runID, source: image, size: try VMSize.named("Standard_B1s"), accelerator: await VMTestEnvironment.accelerator(),
                                     runDirectory: state.runsPath + "/" + runID, stateDirectory: state, injection: .cloudInit)
        let vm = try await BuildMachine.boot(options) { _ in }
        let clock = ContinuousClock()
        let start = clock.now
        do {
            _ = try await vm.waitForGuest(timeout: .seconds(20))
            Issue.record("expected the SSH wait to fail")
        } catch {
            #expect(error.code == .timeout)
            #expect(error.message.contains("Timeout waiting for SSH"))
            #expect(error.message.contains("127.0.0.1:\(vm.sshPort)"))
        }
        #expect(clock.now - start < .seconds(60))
        await vm.teardown(keepFiles: false)
        #expect(VMTestEnvironment.qemuProcesses(named: options.domainName).isEmpty)
        #expect(!FileManager.default.fileExists(atPath: vm.overlayPath))
    }

    @Test("a closed terminal (SIGHUP) tears the VM down as Ctrl-C does")
    func hangUpTearsDown() async throws {
        let state = VMTestEnvironment.makeStateDirectory()
        defer { try? FileManager.default.removeItem(atPath: state.path) }
        let disk = try Self.noSSHDisk(in: state)
        let output = state.path + "/output.txt"
        let kiln = try KilnExecutable.start(["vm", "exec", disk, "--state-dir", state.path, "--inject", "cloud-init", "--", "true"], outputPath: output)
        let clock = ContinuousClock()
        let start = clock.now
        while clock.now - start < .seconds(120), VMTestEnvironment.qemuProcesses(named: state.path).isEmpty {
            try await Task.sleep(for: .milliseconds(500))
        }
        #expect(!VMTestEnvironment.qemuProcesses(named: state.path).isEmpty, "the VM started")
        kill(kiln.pid, SIGHUP)
        let status = try await kiln.wait()
        let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        #expect(status != 0)
        #expect(text.contains("hung up; tearing down"), "\(text)")
        #expect(VMTestEnvironment.qemuProcesses(named: state.path).isEmpty, "no QEMU outlives a hung-up kiln")
    }

    @Test("a port already in use is refused before anything boots")
    func portInUse() async throws {
        let state = VMTestEnvironment.makeStateDirectory()
        defer { try? FileManager.default.removeItem(atPath: state.path) }
        let holder = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(holder) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(holder, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        #expect(bound == 0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(holder, $0, &length) } }
        let port = Int(UInt16(bigEndian: address.sin_port))
        let image = try await VMTestEnvironment.catalog(state).resolve(reference: "Debian:debian-12:12")
        let runID = RunID.make()
        let options = MachineOptions(runID: runID, source: image, size: try VMSize.named("Standard_B1s"), accelerator: .tcg,
                                     runDirectory: state.runsPath + "/" + runID, stateDirectory: state, sshPort: port)
        await #expect(throws: KilnError.self) { _ = try await BuildMachine.boot(options) { _ in } }
        do {
            _ = try await BuildMachine.boot(options) { _ in }
        } catch {
            #expect(error.message.contains("port \(port) on 127.0.0.1 already in use"))
        }
        #expect(VMTestEnvironment.qemuProcesses(named: options.domainName).isEmpty)
        #expect(!FileManager.default.fileExists(atPath: state.runsPath + "/" + runID + "/disk.qcow2"))
    }
}
