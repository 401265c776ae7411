import ArgumentParser
import Foundation
import KilnBuild
import KilnMachine
import KilnStore
import KilnSupport
import KilnTemplate

struct TemplateOutputCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "output",
        abstract: "Print a runOutput as `az resource show …/runOutputs/NAME` does.",
        discussion: "NAME is a created template or the template name of a one-shot kiln build; the newest run with that runOutput answers."
    )

    @Argument(help: "The template's name.")
    var name: String

    @Argument(help: "The runOutputName.")
    var runOutput: String

    @OptionGroup var stateFlags: StateFlags

    func run() throws {
        let store = try stateFlags.open()
        let runs: [StoredRun]
        do { runs = try store.runs(template: name, createdOnly: false) } catch { throw fail(error) }
        for run in runs {
            guard let output = run.record.runOutputs.first(where: { $0.runOutputName.caseInsensitiveEquals(runOutput) }) else { continue }
            var properties: [JSONMember] = []
            if let id = output.artifactId { properties.append(JSONMember(key: "artifactId", value: JSONNode(.string(id)))) }
            if let uri = output.artifactUri { properties.append(JSONMember(key: "artifactUri", value: JSONNode(.string(uri)))) }
            properties.append(JSONMember(key: "provisioningState", value: JSONNode(.string(output.provisioningState))))
            let node = JSONNode(.object([
                JSONMember(key: "id", value: JSONNode(.string(LocalResource.runOutputID(template: run.record.templateName, runOutput: output.runOutputName)))),
                JSONMember(key: "name", value: JSONNode(.string(output.runOutputName))),
                JSONMember(key: "properties", value: JSONNode(.object(properties))),
                JSONMember(key: "resourceGroup", value: JSONNode(.string("kiln"))),
                JSONMember(key: "type", value: JSONNode(.string("Microsoft.VirtualMachineImages/imageTemplates/runOutputs"))),
            ]))
            print(JSONPrinter.print(node))
            return
        }
        let known = Set(runs.flatMap { $0.record.runOutputs.map(\.runOutputName) }).sorted()
        throw fail(KilnError(.notFound, runs.isEmpty
            ? "expected runs of a template named \(name), found none"
            : "expected a runOutput named \(runOutput) in the runs of \(name), found \(known.isEmpty ? "none" : known.joined(separator: ", "))"))
    }
}
