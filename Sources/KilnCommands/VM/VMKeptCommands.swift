import ArgumentParser
import Foundation
import KilnBuild
import KilnSupport

/// `kiln vm list|ssh|stop`: the build VMs kept after a failure (`--on-error abort`, errorHandling abort).
struct VMListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the build VMs kept after a failure.")

    @OptionGroup var stateFlags: StateFlags

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        let (kept, orphaned) = KeptVM.survey(state: stateFlags.state)
        if json {
            try printJSON(kept)
            return
        }
        for vm in orphaned {
            print("run \(vm.runID): the process keeping its VM had died; the VM is stopped and its record removed")
        }
        guard !kept.isEmpty else {
            print("no kept build VMs (a build keeps its VM after a failure with --on-error abort or errorHandling abort)")
            return
        }
        let now = Date()
        printTable([["RUN", "TEMPLATE", "SSH", "KEPT", "PID", "FAILURE"]] + kept.map { vm in
            [vm.runID, vm.templateName, "127.0.0.1:\(vm.sshPort)", CacheAge.format(now.timeIntervalSince(vm.keptAt)) + " ago",
             ProcessIdentity(vm.owner).map { String($0.pid) } ?? "?", String(vm.failure.split(separator: "\n").first ?? "")]
        })
    }
}

struct VMSSHCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ssh",
        abstract: "Open a shell in a kept build VM as the build user, or run one command there (kiln vm ssh RUN -- CMD).",
        discussion: "Runs OpenSSH's ssh with the build's key, checking the host key the build pinned; exits with the command's status."
    )

    @OptionGroup var stateFlags: StateFlags

    @Argument(help: "The run ID of the kept VM (kiln vm list).")
    var run: String

    @Argument(parsing: .postTerminator, help: "A command to run instead of a shell.")
    var command: [String] = []

    func run() async throws {
        let vm = try requireKept(run, state: stateFlags.state)
        if vm.winrmURL != nil {
            throw fail(KilnError(.invalidArgument, "run \(run) kept a Windows VM, which has no SSH; reach it with \(vm.reachCommand)"))
        }
        guard let ssh = Subprocess.find("ssh") else {
            throw fail(KilnError(.notFound, "expected OpenSSH's ssh client on PATH, found none (apt-get install openssh-client); the VM answers at \(vm.sshCommand)"))
        }
        let arguments = ["ssh"] + (command.isEmpty ? ["-t"] : []) + vm.sshArguments + (command.isEmpty ? [] : ["--"] + command)
        let argv = arguments.map { strdup($0) } + [nil]
        execv(ssh, argv)
        throw fail(KilnError(.external, "cannot run \(ssh): \(String(cString: strerror(errno)))"))
    }
}

struct VMStopCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "stop", abstract: "Tear down a kept build VM.")

    @OptionGroup var stateFlags: StateFlags

    @Argument(help: "The run ID of the kept VM (kiln vm list).")
    var run: String

    func run() async throws {
        if KeptVM.survey(state: stateFlags.state).orphaned.contains(where: { $0.runID == run }) {
            print("stopped the build VM of run \(run) (the process keeping it had died)")
            return
        }
        let vm = try requireKept(run, state: stateFlags.state)
        do {
            try await vm.stop(state: stateFlags.state)
        } catch {
            throw fail(error)
        }
        print("stopped the build VM of run \(vm.runID)")
    }
}

func requireKept(_ run: String, state: StateDirectory) throws -> KeptVM {
    let (kept, orphaned) = KeptVM.survey(state: state)
    if orphaned.contains(where: { $0.runID == run }) {
        throw fail(KilnError(.notFound, "the process keeping the VM of run \(run) had died; the VM is stopped now and its record removed"))
    }
    guard let vm = kept.first(where: { $0.runID == run }) else {
        let known = kept.map(\.runID)
        throw fail(KilnError(.notFound, "expected a kept build VM for run \(run), found \(known.isEmpty ? "none" : "only " + known.joined(separator: ", ")) (kiln vm list)"))
    }
    return vm
}
