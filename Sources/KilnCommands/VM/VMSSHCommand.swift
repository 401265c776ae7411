import ArgumentParser
import Foundation
import KilnBuild
import KilnSupport

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
