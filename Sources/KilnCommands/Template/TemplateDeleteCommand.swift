import ArgumentParser
import Foundation
import KilnBuild
import KilnMachine
import KilnStore
import KilnSupport
import KilnTemplate

struct TemplateDeleteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete",
        abstract: "Delete a template with its run history and staging outputs (refused while a run is in progress).",
        discussion: """
        As AIB removes its staging resource group, this removes each run's directory, including VHD outputs that were \
        written there and not moved (a VHD whose uri put it elsewhere stays). Managed images and gallery versions \
        the runs produced are separate resources and stay.
        """
    )

    @Argument(help: "The template's name.")
    var name: String

    @OptionGroup var stateFlags: StateFlags

    func run() throws {
        let store = try stateFlags.open()
        let row = try requireTemplate(name, in: store)
        let runs: [StoredRun]
        do { runs = try store.deleteTemplate(named: row.name) } catch { throw fail(error) }
        let runsRoot = stateFlags.state.runsPath + "/"
        for run in runs {
            for output in run.record.runOutputs where output.type == "VHD" {
                guard let path = output.path, FileManager.default.fileExists(atPath: path) else { continue }
                if path.hasPrefix(run.runDirectory + "/") {
                    print("removed staging output \(path) (runOutput \(output.runOutputName) of run \(run.record.runID))")
                } else {
                    print("kept \(path) (runOutput \(output.runOutputName) of run \(run.record.runID)): its uri put it outside the staging area")
                }
            }
            if run.runDirectory.hasPrefix(runsRoot) {
                try? FileManager.default.removeItem(atPath: run.runDirectory)
            }
        }
        let storedDirectory = (row.storedPath as NSString).deletingLastPathComponent
        if storedDirectory.hasPrefix(stateFlags.state.path + "/templates/") {
            try? FileManager.default.removeItem(atPath: storedDirectory)
        }
        print("deleted template \(row.name) and \(runs.count) run\(runs.count == 1 ? "" : "s")")
    }
}
