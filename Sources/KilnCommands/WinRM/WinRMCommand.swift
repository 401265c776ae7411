import ArgumentParser
import Foundation
import KilnGuest
import KilnSupport
import KilnWinRM

extension WinRMAuth: ExpressibleByArgument {}

struct WinRMCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "winrm",
        abstract: "Talk to a WinRM endpoint (a Windows host, or a kept Windows build VM).",
        subcommands: [WinRMExecCommand.self]
    )
}

/// Quoting one argument for a Windows command line as CommandLineToArgvW and the C runtime split it.
enum WindowsQuote {
    static func argument(_ value: String) -> String {
        guard value.isEmpty || value.contains(where: { " \t\"".contains($0) }) else { return value }
        var quoted = "\""
        var backslashes = 0
        for character in value {
            if character == "\\" {
                backslashes += 1
                continue
            }
            if character == "\"" {
                quoted += String(repeating: "\\", count: backslashes * 2 + 1) + "\""
            } else {
                quoted += String(repeating: "\\", count: backslashes) + String(character)
            }
            backslashes = 0
        }
        return quoted + String(repeating: "\\", count: backslashes * 2) + "\""
    }
}
