import ArgumentParser
import Foundation
import KilnBuild
import KilnSupport

/// `kiln vm list|ssh|stop`: the build VMs kept after a failure (`--on-error abort`, errorHandling abort).
struct VMListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the build VMs kept after a failure.")

    @OptionGroup var stateFlags: StateFlags

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        let (kept, orphaned) = KeptVM.survey(state: stateFlags.state)
        if json {
            try printJSON(kept)
            return
        }
        for vm in orphaned {
            print("run \(vm.runID): the process keeping its VM had died; the VM is stopped and its record removed")
        }
        guard !kept.isEmpty else {
            print("no kept build VMs (a build keeps its VM after a failure with --on-error abort or errorHandling abort)")
            return
        }
        let now = Date()
        printTable([["RUN", "TEMPLATE", "SSH", "KEPT", "PID", "FAILURE"]] + kept.map { vm in
            [vm.runID, vm.templateName, "127.0.0.1:\(vm.sshPort)", CacheAge.format(now.timeIntervalSince(vm.keptAt)) + " ago",
             ProcessIdentity(vm.owner).map { String($0.pid) } ?? "?", String(vm.failure.split(separator: "\n").first ?? "")]
        })
    }
}
