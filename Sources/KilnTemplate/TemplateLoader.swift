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

    public var errors: [Diagnostic] { diagnostics.filter { $0.severity == .error } }
    public var warnings: [Diagnostic] { diagnostics.filter { $0.severity == .warning } }
    public var isValid: Bool { errors.isEmpty }
}

/// Reads a template file: a bare imageTemplates resource, or an ARM deployment template wrapping one or more.
/// No I/O beyond reading the file.
public enum TemplateLoader {
    public static func load(file path: String, parameters: [String: String] = [:]) -> TemplateLoadResult {
        let name = URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent
        guard let data = FileManager.default.contents(atPath: path) else {
            let reason = FileManager.default.fileExists(atPath: path) ? "cannot read the file" : "no such file"
            return TemplateLoadResult(sourceName: path, isDeploymentTemplate: false, templates: [],
                                      diagnostics: [Diagnostic(.error, .root, "expected a readable template file, found \(reason): \(path)")])
        }
        var result = load(bytes: Array(data), name: name, parameters: parameters)
        result.sourceName = path
        return result
    }

    public static func load(text: String, name: String = "template", parameters: [String: String] = [:]) -> TemplateLoadResult {
        load(bytes: Array(text.utf8), name: name, parameters: parameters)
    }

    static func load(bytes: [UInt8], name: String, parameters: [String: String]) -> TemplateLoadResult {
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
        if isDeployment {
            loaded = readDeployment(document, name: name, overrides: parameters, sink: sink)
        } else {
            if !parameters.isEmpty {
                sink.error(.root, "expected an ARM deployment template with parameters for --parameter \(parameters.keys.sorted().joined(separator: ", ")), found a plain image template")
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
        return TemplateLoadResult(sourceName: name, isDeploymentTemplate: isDeployment, templates: loaded, diagnostics: diagnostics)
    }

    private static func readDeployment(_ document: JSONNode, name: String, overrides: [String: String], sink: DiagnosticSink) -> [LoadedTemplate] {
        guard let root = ObjectReader(document, at: .root, sink: sink, expected: "an ARM deployment template object") else { return [] }
        let (values, problems) = resolveParameters(root, overrides: overrides, sink: sink)
        var variables: [String: JSONNode] = [:]
        if let object = root.object("variables") {
            for member in object.node.members ?? [] { variables[member.key.lowercased()] = member.value }
        }
        let evaluator = ARMEvaluator(parameterValues: values, parameterProblems: problems, variableNodes: variables)
        guard let resources = root.array("resources", required: true, expected: "an array of resources") else { return [] }
        var loaded: [LoadedTemplate] = []
        for (index, resource) in resources.enumerated() {
            let base = TemplatePath.root.appending("resources").appending(index: index)
            let type = resource.member("type")?.value.stringValue ?? ""
            guard type.caseInsensitiveEquals(ImageTemplate.resourceType) else { continue }
            let evaluated = evaluator.evaluateTree(resource, at: base, sink: sink)
            let reader = TemplateReader(sink: sink, fallbackName: name)
            if let template = reader.read(evaluated, at: base) {
                loaded.append(LoadedTemplate(template: template, basePath: base, stepPaths: reader.stepPaths))
            }
        }
        if loaded.isEmpty && !sink.hasErrors {
            sink.error(root.path("resources"), "expected at least one resource of type \(ImageTemplate.resourceType), found none")
        }
        return loaded
    }

    /// Parameter values: `--parameter` overrides converted to the declared type, else defaultValue.
    private static func resolveParameters(_ root: ObjectReader, overrides: [String: String], sink: DiagnosticSink)
        -> ([String: JSONNode], [String: String]) {
        var values: [String: JSONNode] = [:]
        var problems: [String: String] = [:]
        var declared: [String: String] = [:]
        let parameters = root.object("parameters")
        for member in parameters?.node.members ?? [] {
            let key = member.key.lowercased()
            declared[key] = member.key
            let path = TemplatePath.root.appending("parameters").appending(member.key)
            guard let definition = ObjectReader(member.value, at: path, sink: sink, expected: "a parameter definition object") else { continue }
            let type = (definition.string("type") ?? "string").lowercased()
            if let override = overrides.first(where: { $0.key.lowercased() == key })?.value {
                guard let node = convert(override, to: type) else {
                    sink.error(path, "expected a value of type \(type) from --parameter \(member.key)=…, found \"\(override)\"")
                    problems[key] = ""
                    continue
                }
                values[key] = node
            } else if let defaultValue = definition.value("defaultValue") {
                values[key] = defaultValue
            } else {
                // Reported where the parameter is used, so the message names the template path that needs it.
                problems[key] = "expected a value for parameter '\(member.key)' from --parameter \(member.key)=VALUE or a defaultValue, found neither"
            }
            if let allowed = definition.value("allowedValues")?.value, case .array(let options) = allowed,
               let chosen = values[key], !options.contains(where: { $0.value == chosen.value }) {
                sink.error(path, "expected one of the allowedValues \(options.map(\.summary).joined(separator: ", ")), found \(chosen.summary)")
            }
        }
        for name in overrides.keys where declared[name.lowercased()] == nil {
            let known = declared.values.sorted().joined(separator: ", ")
            sink.error(TemplatePath.root.appending("parameters"), "expected --parameter to name a declared parameter (\(known.isEmpty ? "none declared" : known)), found \"\(name)\"")
        }
        return (values, problems)
    }

    private static func convert(_ text: String, to type: String) -> JSONNode? {
        switch type {
        case "int":
            return Int(text).map { JSONNode(.number(String($0))) }
        case "bool":
            switch text.lowercased() {
            case "true": return JSONNode(.bool(true))
            case "false": return JSONNode(.bool(false))
            default: return nil
            }
        case "array", "object", "secureobject":
            return try? JSONParser.parse(text)
        default:
            return JSONNode(.string(text))
        }
    }
}
