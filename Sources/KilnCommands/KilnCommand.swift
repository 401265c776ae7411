import ArgumentParser
import Foundation
import KilnLibvirt

/// The `kiln` command tree. The executable only calls `KilnCommand.main()`.
public struct KilnCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "kiln",
        abstract: "Run Azure Image Builder templates on your own host, with real VMs.",
        version: KilnVersion.current,
        subcommands: [ValidateCommand.self, BuildCommand.self, TemplateCommand.self, VMCommand.self, ImageCommand.self, CacheCommand.self, FetchCommand.self, WinRMCommand.self, DoctorCommand.self, VersionCommand.self]
    )

    public init() {}

    /// Process-wide set-up that must happen before libvirt initialises: its warnings (taint notices and the
    /// like, meaningless to a Kiln user) stay off the terminal; errors reach the user through Kiln's messages.
    public static func prepareProcess() {
        // A closed pipe on standard output must not kill Kiln before it tears its VM down.
        signal(SIGPIPE, SIG_IGN)
        EmbeddedDriver.routeLogging(reexec: true)
    }
}

public enum KilnVersion {
    public static let current = "0.1.0"
}
