import ArgumentParser
import Foundation
import KilnBuild
import KilnSupport

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
