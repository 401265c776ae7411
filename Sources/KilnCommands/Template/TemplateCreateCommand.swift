import ArgumentParser
import Foundation
import KilnBuild
import KilnMachine
import KilnStore
import KilnSupport
import KilnTemplate

struct TemplateCreateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Validate a template and store a copy of it under NAME.",
        discussion: "Later edits of the file change nothing until the template is deleted and created again, as with AIB."
    )

    @Argument(help: "The template's name (letters, digits, '-', '_', '.'; at most 64).")
    var name: String

    @Argument(help: "The template JSON file (an imageTemplates resource or an ARM deployment template).")
    var template: String

    @OptionGroup var parameterOptions: ParameterOptions
    @OptionGroup var stateFlags: StateFlags

    func validate() throws {
        let allowed = name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }
        guard allowed, (1...64).contains(name.count), name.first != "." else {
            throw ValidationError("expected a template name of 1-64 letters, digits, '-', '_' or '.', found \"\(name)\"")
        }
    }

    func run() throws {
        let path = template.hasPrefix("/") ? template : FileManager.default.currentDirectoryPath + "/" + template
        let inputs = try parameterOptions.inputs()
        let result = TemplateLoader.load(file: path, inputs: inputs)
        DiagnosticPrinter.printDiagnostics(result, file: template)
        guard result.isValid else {
            printError("\(template): invalid: \(result.errors.count) error\(result.errors.count == 1 ? "" : "s"); nothing was created")
            throw ExitCode.failure
        }
        let candidates = result.templates.count == 1 ? result.templates : result.templates.filter { $0.template.name.caseInsensitiveEquals(name) }
        guard candidates.count == 1, let chosen = candidates.first else {
            throw fail(KilnError(.invalidArgument, "\(template) holds \(result.templates.count) image templates (\(result.templates.map(\.template.name).joined(separator: ", "))); name the template after the one to create"))
        }
        let store = try stateFlags.open()
        do throws(KilnError) {
            // A folder per template keeps the file's own name, from which a bare imageTemplates resource takes its name.
            let directory = try stateFlags.state.create("templates/\(name.lowercased())-\(RunID.make())")
            let stored = directory + "/" + (path as NSString).lastPathComponent
            guard let data = FileManager.default.contents(atPath: path) else {
                throw KilnError(.io, "cannot read \(path)")
            }
            try AtomicFile.write(data, to: stored)
            // Secure parameters are never stored: `template run` takes them from the environment again.
            let secure = Set(result.secureParameterNames.map { $0.lowercased() })
            let storedParameters = inputs.flattenedParameters.filter { !secure.contains($0.key.lowercased()) }
            do {
                try store.createTemplate(TemplateRow(name: name, templatePath: path, storedPath: stored, resourceName: chosen.template.name,
                                                     parameters: storedParameters, location: chosen.template.location))
            } catch {
                try? FileManager.default.removeItem(atPath: directory)
                throw error
            }
        } catch {
            throw fail(error)
        }
        print("created template \(name) from \(template)")
        for secure in result.secureParameterNames {
            print("the \(secure) parameter is secure and not stored: kiln template run takes it from \(DeploymentInputs.secureEnvironmentPrefix)\(secure)")
        }
    }
}
