import ArgumentParser
import Foundation
import KilnBuild
import KilnMachine
import KilnStore
import KilnSupport
import KilnTemplate

struct TemplateCancelCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cancel",
        abstract: "Cancel a template's run in progress (from any terminal): the VM is destroyed, the run ends Canceled."
    )

    @Argument(help: "The template's name.")
    var name: String

    @OptionGroup var stateFlags: StateFlags

    func run() async throws {
        let store = try stateFlags.open()
        let row = try requireTemplate(name, in: store)
        let runs: [StoredRun]
        do { runs = try store.runs(template: row.name) } catch { throw fail(error) }
        guard let active = runs.first(where: \.isActive), let owner = active.owner else {
            throw fail(KilnError(.invalidState, "template \(row.name) has no run in progress" + (runs.first.map { "; its last run \($0.record.runID) is \($0.record.runState.rawValue)" } ?? "")))
        }
        let start = ContinuousClock.now
        do { try store.markCanceling(runID: active.record.runID) } catch { throw fail(error) }
        guard kill(owner.pid, SIGTERM) == 0 else {
            throw fail(KilnError(.external, "cannot signal the build process \(owner.pid): \(String(cString: strerror(errno)))"))
        }
        print("canceling run \(active.record.runID) of \(row.name) (pid \(owner.pid))")
        while ContinuousClock.now - start < .seconds(60) {
            if let run = try? store.run(id: active.record.runID), !run.isActive {
                let elapsed = ContinuousClock.now - start
                print("run \(run.record.runID): \(run.record.runState.rawValue) after \(DurationText.format(elapsed))")
                if run.record.runState != .canceled { throw ExitCode.failure }
                return
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw fail(KilnError(.timeout, "run \(active.record.runID) did not reach Canceled within 60s (pid \(owner.pid) is still running)"))
    }
}
