import ArgumentParser
import Foundation
import KilnBuild
import KilnGuest
import KilnMachine
import KilnSupport

struct VMExecCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "exec",
        abstract: "Boot a source image as a build would, run one command as the build user, tear everything down.",
        discussion: """
        SOURCE is a catalog URN (Debian:debian-12:12:latest, Debian:debian-12:12-gen2) or a disk image file \
        (qcow2, raw, VHD). The command's output is streamed; kiln exits with its exit status.
        """
    )

    @Argument(help: "Catalog URN or disk image file.")
    var source: String

    @Argument(parsing: .postTerminator, help: "The command to run in the guest (after --).")
    var command: [String] = []

    @OptionGroup var machine: MachineFlags

    @Option(help: "Azure VM size for the VM's vCPUs and memory.")
    var size = "Standard_D2s_v3"

    @Option(help: "Grow the OS disk to this many GiB (0: the source's size).")
    var osDiskSizeGB = 0

    @Option(help: "Host port on 127.0.0.1 for the guest's SSH (default: a free one).")
    var sshPort: Int?

    @Option(help: "How long to wait for SSH, e.g. 20m, 90s.")
    var sshTimeout = "20m"

    @Option(help: "How the build user reaches the guest: auto, cloud-init or offline (libguestfs).")
    var inject: CredentialInjection = .auto

    @Flag(help: "Print no progress lines.")
    var quiet = false

    func validate() throws {
        guard !command.isEmpty else { throw ValidationError("give the command to run after --, e.g. kiln vm exec SOURCE -- uname -a") }
        guard DurationText.parse(sshTimeout) != nil else { throw ValidationError("--ssh-timeout expects a duration such as 20m or 90s, found \"\(sshTimeout)\"") }
    }

    func run() async throws {
        do { try machine.requireOneHost("kiln vm exec") } catch { throw fail(error) }
        let events = ConsoleEvents(quiet: quiet)
        let state = machine.state
        let reference = source
        let commandLine = command.count == 1 ? command[0] : command.map(ShellQuote.quote).joined(separator: " ")
        let flags = machine
        let size = self.size, osDiskSizeGB = self.osDiskSizeGB, sshPort = self.sshPort, inject = self.inject
        let timeout = DurationText.parse(sshTimeout) ?? .seconds(1200)
        let status: Int32
        do {
            status = try await Interruptible.run { () async throws(KilnError) -> Int32 in
                let vmSize = try VMSize.named(size)
                let catalog = try ImageCatalog.locate(state: state)
                let image = try await catalog.resolve(reference: reference) { events($0) }
                let decision = await AcceleratorProbe.decide(flags.accel, cacheDirectory: state.path)
                events("accelerator \(decision.accelerator.rawValue): \(decision.evidence)")
                let runID = RunID.make()
                let runDirectory = state.runsPath + "/vm-exec-" + runID
                let options = MachineOptions(runID: runID, source: image, size: vmSize, osDiskSizeGB: osDiskSizeGB, accelerator: decision.accelerator,
                                             runDirectory: runDirectory, libvirtURI: flags.libvirtURI, stateDirectory: state, sshPort: sshPort,
                                             injection: inject)
                let vm = try await BuildMachine.boot(options) { events($0) }
                defer { try? FileManager.default.removeItem(atPath: runDirectory) }
                do throws(KilnError) {
                    let session = try await vm.waitForGuest(timeout: timeout)
                    events("SSH ready as \(vm.username); running: \(commandLine)")
                    let result = try await session.exec(commandLine) { chunk in
                        let handle = chunk.stream == .stdout ? FileHandle.standardOutput : FileHandle.standardError
                        handle.write(Data(chunk.bytes))
                    }
                    await session.close()
                    await vm.teardown(keepFiles: false)
                    events("\(result); VM torn down")
                    return ExitStatusMapping.code(for: result)
                } catch {
                    await vm.teardown(keepFiles: false)
                    throw error
                }
            }
        } catch let error as KilnError {
            if error.code == .cancelled || Task.isCancelled {
                printError("kiln: cancelled; VM torn down")
                throw ExitCode(130)
            }
            throw fail(error)
        }
        throw ExitCode(status)
    }
}

/// Exit codes as ssh reports them: the command's status, 128+N for a signal, 255 for a lost connection.
enum ExitStatusMapping {
    static let signalNumbers = ["HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "ABRT": 6, "FPE": 8, "KILL": 9, "USR1": 10, "SEGV": 11,
                                "USR2": 12, "PIPE": 13, "ALRM": 14, "TERM": 15]

    static func code(for result: ExecResult) -> Int32 {
        switch result.outcome {
        case .exited(let code): return code
        case .signaled(let name): return Int32(128 + (signalNumbers[name] ?? 0))
        case .disconnected: return 255
        }
    }
}
