import ArgumentParser
import Foundation
import KilnBuild
import KilnMachine
import KilnStore
import KilnSupport
import KilnTemplate

struct TemplateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "template",
        abstract: "Image templates kept in local state, as `az image builder` manages them in Azure.",
        discussion: """
        create stores a copy of the template; run builds it (in the foreground, or in the background with --no-wait); \
        cancel, show, list, logs and output follow runs; delete removes the template and its staging outputs. \
        `kiln build` is the one-shot form.
        """,
        subcommands: [TemplateCreateCommand.self, TemplateRunCommand.self, TemplateCancelCommand.self, TemplateShowCommand.self,
                      TemplateListCommand.self, TemplateDeleteCommand.self, TemplateLogsCommand.self, TemplateOutputCommand.self]
    )
}

/// `--state-dir` for commands that only read or change local state.
struct StateFlags: ParsableArguments {
    @Option(help: "State directory (default: $KILN_STATE_DIR, else $XDG_DATA_HOME/kiln).")
    var stateDir: String?

    var state: StateDirectory { StateDirectory(explicit: stateDir) }

    func open() throws -> StateStore {
        do { return try StateStore.open(state) } catch { throw fail(error) }
    }
}

func requireTemplate(_ name: String, in store: StateStore) throws -> TemplateRow {
    do throws(KilnError) {
        guard let row = try store.template(named: name) else {
            let known = (try? store.templates().map(\.name)) ?? []
            throw KilnError(.notFound, "expected an image template named \(name), found none" + (known.isEmpty ? "; create one with kiln template create \(name) TEMPLATE.json" : " (known: \(known.joined(separator: ", ")))"))
        }
        return row
    } catch {
        throw fail(error)
    }
}
