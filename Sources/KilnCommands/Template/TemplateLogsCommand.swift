import ArgumentParser
import Foundation
import KilnBuild
import KilnMachine
import KilnStore
import KilnSupport
import KilnTemplate

struct TemplateLogsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "logs", abstract: "Print the customization.log of a template's latest run.")

    @Argument(help: "The template's name.")
    var name: String

    @Option(help: "A run other than the latest.")
    var run: String?

    @Flag(help: "Keep printing as the log grows, until the run ends.")
    var follow = false

    @OptionGroup var stateFlags: StateFlags

    func run() async throws {
        let store = try stateFlags.open()
        let row = try requireTemplate(name, in: store)
        let runs = (try? store.runs(template: row.name)) ?? []
        guard let chosen = run.map({ id in runs.first { $0.record.runID == id } }) ?? runs.first else {
            throw fail(KilnError(.notFound, run.map { "expected run \($0) of template \(row.name), found none" } ?? "template \(row.name) has not run yet"))
        }
        let path = chosen.runDirectory + "/customization.log"
        var offset: UInt64 = 0
        func drain() {
            guard let handle = FileHandle(forReadingAtPath: path) else { return }
            defer { try? handle.close() }
            try? handle.seek(toOffset: offset)
            let data = handle.readDataToEndOfFile()
            offset += UInt64(data.count)
            FileHandle.standardOutput.write(data)
        }
        drain()
        guard follow else { return }
        while true {
            let active = (try? store.run(id: chosen.record.runID))?.isActive ?? false
            drain()
            if !active { break }
            try await Task.sleep(for: .milliseconds(500))
        }
    }
}
