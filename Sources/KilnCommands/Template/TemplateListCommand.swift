import ArgumentParser
import Foundation
import KilnBuild
import KilnMachine
import KilnStore
import KilnSupport
import KilnTemplate

struct TemplateListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List created templates and their last run.")

    @OptionGroup var stateFlags: StateFlags

    func run() throws {
        let store = try stateFlags.open()
        let rows: [TemplateRow]
        do { rows = try store.templates() } catch { throw fail(error) }
        var table = [["NAME", "LOCATION", "LAST RUN", "STATE", "SUBSTATE", "STARTED"]]
        for row in rows {
            let last = try? store.runs(template: row.name).first
            table.append([row.name, row.location, last?.record.runID ?? "-", last?.record.runState.rawValue ?? "-",
                          last?.record.runSubState.rawValue ?? "-", last.map { ISO8601DateFormatter().string(from: $0.record.startTime) } ?? "-"])
        }
        printTable(table)
    }
}
