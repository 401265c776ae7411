import ArgumentParser

struct VMCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vm",
        abstract: "Boot source images and run commands in them.",
        subcommands: [VMExecCommand.self]
    )
}
