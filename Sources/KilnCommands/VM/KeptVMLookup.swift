import ArgumentParser
import Foundation
import KilnBuild
import KilnSupport

func requireKept(_ run: String, state: StateDirectory) throws -> KeptVM {
    let (kept, orphaned) = KeptVM.survey(state: state)
    if orphaned.contains(where: { $0.runID == run }) {
        throw fail(KilnError(.notFound, "the process keeping the VM of run \(run) had died; the VM is stopped now and its record removed"))
    }
    guard let vm = kept.first(where: { $0.runID == run }) else {
        let known = kept.map(\.runID)
        throw fail(KilnError(.notFound, "expected a kept build VM for run \(run), found \(known.isEmpty ? "none" : "only " + known.joined(separator: ", ")) (kiln vm list)"))
    }
    return vm
}
