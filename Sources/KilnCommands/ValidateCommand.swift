import ArgumentParser
import KilnTemplate

struct ValidateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "validate",
        abstract: "Check an image template (or an ARM deployment template wrapping one) and list every problem.",
        discussion: """
        Exit status 0 when the template is valid, 1 when it is not. Each problem names its JSON path \
        (properties.customize[2].name), what was expected and what was found. Warnings do not fail. \
        securestring and secureObject parameter values are shown as ***.
        """
    )

    @Argument(help: "The template JSON file.")
    var template: String

    @OptionGroup var parameterOptions: ParameterOptions

    @Flag(help: "Print the effective template, with every default applied, as JSON.")
    var print = false

    func run() throws {
        let result = TemplateLoader.load(file: template, inputs: try parameterOptions.inputs())
        DiagnosticPrinter.printDiagnostics(result, file: template)
        guard result.isValid else {
            printError("\(template): invalid: \(result.errors.count) error\(result.errors.count == 1 ? "" : "s")")
            throw ExitCode.failure
        }
        if print {
            let nodes = result.templates.map(\.template.effectiveJSON)
            // Secure parameter values never reach the output.
            Swift.print(result.masked(JSONPrinter.print(nodes.count == 1 ? nodes[0] : JSONNode(.array(nodes)))))
        } else {
            let names = result.templates.map(\.template.name).joined(separator: ", ")
            let warnings = result.warnings.count
            Swift.print("\(template): valid (\(result.templates.count) image template\(result.templates.count == 1 ? "" : "s"): \(names))"
                        + (warnings > 0 ? ", \(warnings) warning\(warnings == 1 ? "" : "s")" : ""))
        }
    }
}

enum DiagnosticPrinter {
    /// One line per problem on standard error: `file: error: path: expected …, found …`.
    static func printDiagnostics(_ result: TemplateLoadResult, file: String) {
        for diagnostic in result.diagnostics {
            if diagnostic.path == .root, let position = diagnostic.position {
                printError("\(file):\(position.line):\(position.column): \(diagnostic.severity.rawValue): \(diagnostic.message)")
            } else {
                printError("\(file): \(diagnostic.severity.rawValue): \(diagnostic)")
            }
        }
    }
}
