import ArgumentParser
import Foundation
import KilnBuild
import KilnMachine
import KilnStore
import KilnSupport
import KilnTemplate

struct TemplateShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Show a template's properties and lastRunStatus (--json: the resource as `az image builder show` prints it)."
    )

    @Argument(help: "The template's name.")
    var name: String

    @Flag(help: "Print the resource as JSON.")
    var json = false

    @OptionGroup var stateFlags: StateFlags

    func run() throws {
        let store = try stateFlags.open()
        let row = try requireTemplate(name, in: store)
        let last = try? store.runs(template: row.name).first
        if json {
            print(JSONPrinter.print(try Self.resource(row, lastRun: last)))
            return
        }
        print("name:          \(row.name)")
        print("id:            \(LocalResource.templateID(row.name))")
        print("location:      \(row.location)")
        print("created:       \(row.createdAt) from \(row.templatePath)")
        if let last {
            print("lastRunStatus: \(last.record.runState.rawValue) (\(last.record.runSubState.rawValue)), run \(last.record.runID)")
            print("  started:     \(last.record.startTime)" + (last.record.endTime.map { ", ended \($0)" } ?? ""))
            if let host = last.record.host { print("  host:        \(host) (the build VM ran there)") }
            if !last.record.message.isEmpty { print("  message:     \(last.record.message)") }
            for output in last.record.runOutputs {
                print("  runOutput \(output.runOutputName) (\(output.type)): \(output.provisioningState) \(output.artifactId ?? output.artifactUri ?? output.error ?? "")")
            }
        } else {
            print("lastRunStatus: never run (kiln template run \(row.name))")
        }
    }

    /// The imageTemplates resource: the effective template under the local ID, with provisioningState and lastRunStatus.
    static func resource(_ row: TemplateRow, lastRun: StoredRun?) throws -> JSONNode {
        // Secure parameters may come from the environment, as when the template was created.
        let loaded = TemplateLoader.load(file: row.storedPath, inputs: DeploymentInputs(parameters: row.parameterValues,
                                                                                        environment: ProcessInfo.processInfo.environment))
        guard let chosen = loaded.templates.first(where: { $0.template.name == row.resourceName }) ?? loaded.templates.first,
              var members = chosen.template.effectiveJSON.members else {
            throw fail(KilnError(.invalidState, "the stored copy of template \(row.name) (\(row.storedPath)) no longer loads: \(loaded.errors.map(\.description).joined(separator: "; "))"))
        }
        members.removeAll { $0.key == "name" || $0.key == "apiVersion" }
        members.insert(JSONMember(key: "id", value: JSONNode(.string(LocalResource.templateID(row.name)))), at: 0)
        members.insert(JSONMember(key: "name", value: JSONNode(.string(row.name))), at: 1)
        if let index = members.firstIndex(where: { $0.key == "properties" }), var properties = members[index].value.members {
            properties.append(JSONMember(key: "provisioningState", value: JSONNode(.string("Succeeded"))))
            if let lastRun {
                let formatter = ISO8601DateFormatter()
                var status: [JSONMember] = [
                    JSONMember(key: "startTime", value: JSONNode(.string(formatter.string(from: lastRun.record.startTime)))),
                    JSONMember(key: "endTime", value: JSONNode(lastRun.record.endTime.map { .string(formatter.string(from: $0)) } ?? .null)),
                    JSONMember(key: "runState", value: JSONNode(.string(lastRun.record.runState.rawValue))),
                    JSONMember(key: "runSubState", value: JSONNode(.string(lastRun.record.runSubState.rawValue))),
                    JSONMember(key: "message", value: JSONNode(.string(lastRun.record.message))),
                ]
                status.append(JSONMember(key: "runId", value: JSONNode(.string(lastRun.record.runID))))
                properties.append(JSONMember(key: "lastRunStatus", value: JSONNode(.object(status))))
            }
            members[index] = JSONMember(key: "properties", value: JSONNode(.object(properties)))
        }
        return JSONNode(.object(members))
    }
}
