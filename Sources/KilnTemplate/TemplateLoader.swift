import Foundation

/// One image template read from a file, with the path prefix its diagnostics use (`resources[1]` inside an ARM wrapper).
public struct LoadedTemplate: Sendable, Equatable {
    public var template: ImageTemplate
    public var basePath: TemplatePath
    public var stepPaths: StepPaths
}

public struct TemplateLoadResult: Sendable {
    public var sourceName: String
    /// True when the file is an ARM deployment template whose `resources` hold the image templates.
    public var isDeploymentTemplate: Bool
    public var templates: [LoadedTemplate]
    public var diagnostics: [Diagnostic]
    /// Values of `securestring`/`secureObject` parameters (their strings), which no output may show.
    public var secrets: [String] = []
    /// The names of the `securestring`/`secureObject` parameters, as declared.
    public var secureParameterNames: [String] = []

    public var errors: [Diagnostic] { diagnostics.filter { $0.severity == .error } }
    public var warnings: [Diagnostic] { diagnostics.filter { $0.severity == .warning } }
    public var isValid: Bool { errors.isEmpty }

    /// `text` with every secure parameter value replaced by `***` (longest first, so one secret inside another is
    /// masked whole).
    public func masked(_ text: String) -> String {
        var output = text
        for secret in secrets.sorted(by: { $0.count > $1.count }) where !secret.isEmpty {
            output = output.replacingOccurrences(of: secret, with: "***")
        }
        return output
    }
}

/// Reads a template file: a bare imageTemplates resource, or an ARM deployment template wrapping one or more
/// (directly or in nested deployments). No I/O beyond reading the file.
public enum TemplateLoader {
    public static func load(file path: String, parameters: [String: String] = [:]) -> TemplateLoadResult {
        load(file: path, inputs: DeploymentInputs(parameters: parameters))
    }

    public static func load(file path: String, inputs: DeploymentInputs) -> TemplateLoadResult {
        let name = URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent
        let bytes: [UInt8]
        switch InputFile.read(path, what: "template") {
        case .success(let read): bytes = read
        case .failure(let refusal):
            return TemplateLoadResult(sourceName: path, isDeploymentTemplate: false, templates: [],
                                      diagnostics: [Diagnostic(.error, .root, refusal.message)])
        }
        var result = load(bytes: bytes, name: name, inputs: inputs)
        result.sourceName = path
        return result
    }

    public static func load(text: String, name: String = "template", parameters: [String: String] = [:]) -> TemplateLoadResult {
        load(bytes: Array(text.utf8), name: name, inputs: DeploymentInputs(parameters: parameters))
    }

    public static func load(text: String, name: String = "template", inputs: DeploymentInputs) -> TemplateLoadResult {
        load(bytes: Array(text.utf8), name: name, inputs: inputs)
    }

    static func load(bytes: [UInt8], name: String, inputs: DeploymentInputs) -> TemplateLoadResult {
        let document: JSONNode
        do {
            document = try JSONParser.parse(bytes: bytes)
        } catch {
            return TemplateLoadResult(sourceName: name, isDeploymentTemplate: false, templates: [],
                                      diagnostics: [Diagnostic(.error, .root, "malformed JSON: \(error.message)", at: error.position)])
        }
        let sink = DiagnosticSink()
        let isDeployment = document.member("resources") != nil || (document.member("$schema")?.value.stringValue?.lowercased().contains("deploymenttemplate") ?? false)
        var loaded: [LoadedTemplate] = []
        var secrets: [String] = []
        var secureNames: [String] = []
        if isDeployment {
            let reader = DeploymentReader(sink: sink, name: name, context: inputs.context)
            reader.readTopLevel(document, inputs: inputs)
            loaded = reader.loaded
            secrets = reader.secrets
            secureNames = reader.secureParameterNames
            if loaded.isEmpty && !sink.hasErrors {
                let existing = reader.existingImageTemplates.map(\.description).joined(separator: ", ")
                let found = existing.isEmpty ? "none" : "only \"existing\": true references (\(existing)), which deploy nothing"
                sink.error(TemplatePath.root.appending("resources"), "expected at least one resource of type \(ImageTemplate.resourceType) (directly or in a nested deployment's inline template), found \(found)")
            }
        } else {
            let given = Set(inputs.parameters.keys).union(inputs.fileParameters.keys)
            if !given.isEmpty {
                sink.error(.root, "expected an ARM deployment template with parameters for \(given.sorted().joined(separator: ", ")), found a plain image template")
            }
            let reader = TemplateReader(sink: sink, fallbackName: name)
            if let template = reader.read(document, at: .root) {
                loaded.append(LoadedTemplate(template: template, basePath: .root, stepPaths: reader.stepPaths))
            }
        }
        var diagnostics = sink.diagnostics
        for entry in loaded {
            if let os = entry.template.declaredOSType {
                diagnostics += GuestRules.check(entry, osType: os)
            }
        }
        var result = TemplateLoadResult(sourceName: name, isDeploymentTemplate: isDeployment, templates: loaded, diagnostics: diagnostics,
                                        secrets: secrets)
        result.secureParameterNames = secureNames
        if !secrets.isEmpty {
            result.diagnostics = result.diagnostics.map { diagnostic in
                var copy = diagnostic
                copy.message = result.masked(diagnostic.message)
                return copy
            }
        }
        return result
    }
}
