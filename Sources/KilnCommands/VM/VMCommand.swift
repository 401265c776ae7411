import ArgumentParser

struct VMCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vm",
        abstract: "Boot source images and run commands in them; reach and stop build VMs kept after a failure.",
        subcommands: [VMExecCommand.self, VMListCommand.self, VMSSHCommand.self, VMStopCommand.self]
    )
}
