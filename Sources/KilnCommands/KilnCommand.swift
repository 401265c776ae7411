import ArgumentParser

/// The `kiln` command tree. The executable only calls `KilnCommand.main()`.
public struct KilnCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "kiln",
        abstract: "Run Azure Image Builder templates on your own host, with real VMs.",
        version: KilnVersion.current,
        subcommands: [ValidateCommand.self, VersionCommand.self]
    )

    public init() {}
}

public enum KilnVersion {
    public static let current = "0.1.0"
}
