/// Walks an ARM deployment template (https://learn.microsoft.com/azure/azure-resource-manager/templates/syntax):
/// resolves its parameters, evaluates the imageTemplates resources in its scope, and follows nested deployments
/// (`Microsoft.Resources/deployments` with an inline `properties.template`,
/// https://learn.microsoft.com/azure/azure-resource-manager/templates/linked-templates#nested-template) with inner or
/// outer expression scope. Every message carries the path inside the file
/// (`resources[0].properties.template.resources[1].properties.customize[0]`).
final class DeploymentReader {
    static let deploymentType = "Microsoft.Resources/deployments"

    let sink: DiagnosticSink
    let name: String
    let context: DeploymentContext
    private(set) var loaded: [LoadedTemplate] = []
    private(set) var secrets: [String] = []
    /// The names of the `securestring`/`secureObject` parameters, as declared.
    private(set) var secureParameterNames: [String] = []
    /// Image templates declared `"existing": true` (references, not deployments), for the message when nothing else is found.
    private(set) var existingImageTemplates: [TemplatePath] = []

    init(sink: DiagnosticSink, name: String, context: DeploymentContext) {
        self.sink = sink
        self.name = name
        self.context = context
    }

    /// What a template's parameters are given from outside it.
    struct Supplied {
        var text: [String: String] = [:]      // --parameter key=value
        var json: [String: JSONNode] = [:]    // a parameter file, or a nested deployment's properties.parameters
        var environment: [String: String] = [:]
        /// How the messages name the source of a JSON value.
        var jsonSource = "the parameter file"
        /// Where unknown names are reported.
        var unknownPath = TemplatePath.root.appending("parameters")
    }

    func readTopLevel(_ document: JSONNode, inputs: DeploymentInputs) {
        let supplied = Supplied(text: inputs.parameters, json: inputs.fileParameters, environment: inputs.environment)
        readTemplate(document, at: .root, supplied: supplied, deploymentName: context.deploymentName ?? name)
    }

    private func readTemplate(_ document: JSONNode, at base: TemplatePath, supplied: Supplied, deploymentName: String) {
        guard let root = ObjectReader(document, at: base, sink: sink, expected: "an ARM deployment template object") else { return }
        let symbolic = readLanguageVersion(document, at: base)
        let definitions = TypeDefinitions(definitions: root.object("definitions")?.node.members ?? [], path: root.path("definitions"))
        let (values, defaults, problems) = resolveParameters(root, supplied: supplied, definitions: definitions)
        var variables: [String: JSONNode] = [:]
        var loopVariables: Set<String> = []
        if let object = root.object("variables") {
            for member in object.node.members ?? [] {
                // A "copy" array here defines one variable per loop (ARMPropertyCopy.swift).
                guard member.key.caseInsensitiveEquals("copy"), case .array(let loops) = member.value.value else {
                    variables[member.key.lowercased()] = member.value
                    continue
                }
                for (index, loop) in loops.enumerated() {
                    guard let name = loop.member("name")?.value.stringValue else {
                        sink.error(object.path(member.key).appending(index: index), "expected a variable loop {name, count, input} with a name, found \(loop.summary)", at: loop)
                        continue
                    }
                    variables[name.lowercased()] = JSONNode(.object([JSONMember(key: member.key, value: JSONNode(.array([loop])))]), at: loop.position)
                    loopVariables.insert(name.lowercased())
                }
            }
        }
        let functions = UserFunctions.read(root.value("functions"), at: root.path("functions"), sink: sink, mayCallEachOther: symbolic)
        let evaluator = ARMEvaluator(parameterValues: values, defaultParameters: defaults, parameterProblems: problems,
                                     variableNodes: variables, context: context, deploymentName: deploymentName,
                                     userFunctions: functions, userFunctionsMayCallEachOther: symbolic, loopVariableNames: loopVariables)
        guard let resources = root.value("resources") else {
            root.missing("resources", symbolic ? "an object of resources by symbolic name" : "an array of resources")
            return
        }
        readResources(resources, at: root.path("resources"), symbolic: symbolic, evaluator: evaluator)
    }

    /// `languageVersion` (https://learn.microsoft.com/azure/azure-resource-manager/templates/syntax#template-format):
    /// "2.0" (and the experimental versions before it) allows resources as an object keyed by symbolic name. True then.
    private func readLanguageVersion(_ template: JSONNode, at base: TemplatePath) -> Bool {
        guard let node = template.member("languageVersion")?.value else { return false }
        let path = base.appending("languageVersion")
        guard let version = node.stringValue else {
            sink.error(path, "expected \"1.0\" or \"2.0\", found \(node.summary)", at: node)
            return false
        }
        switch version {
        case "1.0": return false
        case "2.0": return true
        case _ where version.hasSuffix("-experimental"):
            sink.warning(path, "an experimental language version; read as \"2.0\"", at: node)
            return true
        default:
            sink.error(path, "expected \"1.0\" or \"2.0\", found \"\(version)\"", at: node)
            return false
        }
    }

    /// A resources array, or with languageVersion 2.0 an object keyed by symbolic name
    /// (https://learn.microsoft.com/azure/azure-resource-manager/templates/resource-declaration). A symbolic resource
    /// with `"existing": true` refers to a resource deployed elsewhere: it is not deployed, so it is not read.
    private func readResources(_ resources: JSONNode, at path: TemplatePath, symbolic: Bool, evaluator: ARMEvaluator) {
        var entries: [(path: TemplatePath, node: JSONNode)] = []
        switch resources.value {
        case .array(let items):
            entries = items.enumerated().map { (path.appending(index: $0.offset), $0.element) }
        case .object(let members) where symbolic:
            for member in members {
                if case .bool(true)? = member.value.member("existing")?.value.value {
                    if member.value.member("type")?.value.stringValue?.caseInsensitiveEquals(ImageTemplate.resourceType) == true {
                        existingImageTemplates.append(path.appending(member.key))
                    }
                    continue
                }
                entries.append((path.appending(member.key), member.value))
            }
        case .object:
            sink.error(path, "expected an array of resources (resources keyed by symbolic name need \"languageVersion\": \"2.0\"), found an object", at: resources)
            return
        default:
            sink.error(path, "expected \(symbolic ? "an object of resources by symbolic name" : "an array of resources"), found \(resources.summary)", at: resources)
            return
        }
        for (base, resource) in entries {
            guard let members = resource.members else { continue }
            guard let copy = members.first(where: { $0.key.caseInsensitiveEquals("copy") }) else {
                readResource(resource, at: base, symbolic: symbolic, evaluator: evaluator)
                continue
            }
            // A resource copy loop (https://learn.microsoft.com/azure/azure-resource-manager/templates/copy-resources):
            // the resource once per index, copyIndex() giving the index; each copy's messages carry the resource's path.
            guard let (name, count) = readCopy(copy.value, at: base.appending(copy.key), evaluator: evaluator) else { continue }
            let body = JSONNode(.object(members.filter { !$0.key.caseInsensitiveEquals("copy") }), at: resource.position)
            for copyIndex in 0..<count {
                evaluator.copyLoop = (name, copyIndex)
                readResource(body, at: base, symbolic: symbolic, evaluator: evaluator)
            }
            evaluator.copyLoop = nil
        }
    }

    /// copy: {name, count[, mode, batchSize]}; count from 0 to 800 (ARM's limit), and may be an expression.
    private func readCopy(_ node: JSONNode, at path: TemplatePath, evaluator: ARMEvaluator) -> (String, Int)? {
        let copy = evaluator.evaluateTree(node, at: path, sink: sink)
        guard let reader = ObjectReader(copy, at: path, sink: sink, expected: "a copy object with name and count") else { return nil }
        let name = reader.string("name", required: true, expected: "a loop name")
        let count = reader.int("count", required: true, expected: "a count from 0 to 800")
        _ = reader.value("mode")
        _ = reader.value("batchSize")
        reader.reportUnknown()
        guard let name, let count else { return nil }
        guard (0...800).contains(count) else {
            sink.error(path.appending("count"), "expected a count from 0 to 800 (ARM's limit), found \(count)", at: reader.value("count"))
            return nil
        }
        return (name, count)
    }

    private func readResource(_ resource: JSONNode, at base: TemplatePath, symbolic: Bool, evaluator: ARMEvaluator) {
        if let condition = resource.member("condition")?.value {
            let value = evaluator.evaluateTree(condition, at: base.appending("condition"), sink: sink)
            if case .bool(false) = value.value { return }
        }
        // What ARM itself reads (the deployment's condition, a symbolic resource's existing: false) is not a
        // property of the image template.
        let armKeys: Set<String> = symbolic ? ["condition", "existing"] : ["condition"]
        let body = JSONNode(.object((resource.members ?? []).filter { !armKeys.contains($0.key.lowercased()) }), at: resource.position)
        let typeNode = resource.member("type")?.value
        let type = typeNode.map { evaluator.evaluateTree($0, at: base.appending("type"), sink: sink) }?.stringValue ?? ""
        if type.caseInsensitiveEquals(ImageTemplate.resourceType) {
            let evaluated = evaluator.evaluateTree(body, at: base, sink: sink)
            let reader = TemplateReader(sink: sink, fallbackName: name)
            if let template = reader.read(evaluated, at: base) {
                loaded.append(LoadedTemplate(template: template, basePath: base, stepPaths: reader.stepPaths))
            }
        } else if type.caseInsensitiveEquals(DeploymentReader.deploymentType) {
            readNestedDeployment(resource, at: base, outer: evaluator)
        }
    }

    private func readNestedDeployment(_ resource: JSONNode, at base: TemplatePath, outer: ARMEvaluator) {
        let propertiesPath = base.appending("properties")
        guard let properties = resource.member("properties")?.value, properties.members != nil else { return }
        if properties.member("templateLink") != nil {
            sink.warning(propertiesPath.appending("templateLink"), "a linked template is not fetched; image templates in it are not read (inline it as properties.template to build it)")
        }
        guard let template = properties.member("template")?.value else { return }
        let templatePath = propertiesPath.appending("template")
        var scope = "outer"
        if let options = properties.member("expressionEvaluationOptions")?.value, let scopeNode = options.member("scope")?.value {
            let scopePath = propertiesPath.appending("expressionEvaluationOptions").appending("scope")
            let value = outer.evaluateTree(scopeNode, at: scopePath, sink: sink)
            guard let text = value.stringValue, ["inner", "outer"].contains(text.lowercased()) else {
                sink.error(scopePath, "expected \"inner\" or \"outer\", found \(value.summary)", at: scopeNode)
                return
            }
            scope = text.lowercased()
        }
        var deploymentName = "nested"
        if let nameNode = resource.member("name")?.value {
            deploymentName = outer.evaluateTree(nameNode, at: base.appending("name"), sink: sink).stringValue ?? deploymentName
        }
        if scope == "outer" {
            // The parent's parameters and variables apply; the nested template's own are not used (ARM's rule).
            for key in ["parameters", "variables", "functions"] {
                if let declared = template.member(key)?.value, let members = declared.members, !members.isEmpty {
                    sink.warning(templatePath.appending(key), "ignored: with expressionEvaluationOptions.scope \"outer\" (the default) expressions use the parent template's \(key); set scope \"inner\" to use these")
                }
            }
            guard let resources = template.member("resources")?.value else { return }
            let symbolic = readLanguageVersion(template, at: templatePath)
            readResources(resources, at: templatePath.appending("resources"), symbolic: symbolic, evaluator: outer)
            return
        }
        // Inner scope: the values passed in properties.parameters are evaluated in the parent's scope.
        var supplied = Supplied(jsonSource: "the nested deployment's properties.parameters", unknownPath: propertiesPath.appending("parameters"))
        for member in properties.member("parameters")?.value.members ?? [] {
            let path = propertiesPath.appending("parameters").appending(member.key)
            guard let value = member.value.member("value")?.value else {
                sink.error(path, "expected an object with \"value\", found \(member.value.summary)", at: member.value)
                continue
            }
            supplied.json[member.key] = outer.evaluateTree(value, at: path.appending("value"), sink: sink)
        }
        readTemplate(template, at: templatePath, supplied: supplied, deploymentName: deploymentName)
    }

    /// Parameter values: supplied values (a `--parameter` converted to the declared type, else a JSON value checked
    /// against it, else for secure types the environment), else defaultValue.
    private func resolveParameters(_ root: ObjectReader, supplied: Supplied, definitions: TypeDefinitions) -> ([String: JSONNode], Set<String>, [String: String]) {
        var values: [String: JSONNode] = [:]
        var defaults: Set<String> = []
        var problems: [String: String] = [:]
        var declared: [String: String] = [:]
        for member in root.object("parameters")?.node.members ?? [] {
            let key = member.key.lowercased()
            declared[key] = member.key
            let path = root.path("parameters").appending(member.key)
            guard member.value.members != nil, let declaration = definitions.resolve(member.value, at: path, sink: sink),
                  let definition = ObjectReader(declaration, at: path, sink: sink, expected: "a parameter definition object") else {
                if member.value.members == nil { sink.error(path, "expected a parameter definition object, found \(member.value.summary)", at: member.value) }
                problems[key] = ""
                continue
            }
            let type = (definition.string("type") ?? "string").lowercased()
            let secure = type == "securestring" || type == "secureobject"
            // languageVersion 2.0's "nullable": true (on the parameter or its definition): null when nothing is given.
            let nullable = definition.value("nullable")?.value == .bool(true)
            if let override = supplied.text.first(where: { $0.key.lowercased() == key })?.value {
                guard !secure else {
                    // A command line is readable by every user of the host (ps, /proc) and lands in shell history.
                    sink.error(path, "expected the \(type) parameter '\(member.key)' in the environment variable \(DeploymentInputs.secureEnvironmentPrefix)\(member.key) or a parameter file, found it on the command line (--parameter), where every user of this host can read it")
                    problems[key] = ""
                    continue
                }
                guard let node = ParameterTypes.convert(override, to: type) else {
                    sink.error(path, "expected a value of type \(type) from --parameter \(member.key)=…, found \"\(secure ? "***" : override)\"")
                    problems[key] = ""
                    continue
                }
                values[key] = node
            } else if let given = supplied.json.first(where: { $0.key.lowercased() == key })?.value {
                guard ParameterTypes.matches(given.value, type) || (nullable && given.value == .null) else {
                    sink.error(path, "expected a value of type \(type) from \(supplied.jsonSource), found \(secure ? "another type" : given.summary)")
                    problems[key] = ""
                    continue
                }
                values[key] = given
            } else if secure, let text = supplied.environment[DeploymentInputs.secureEnvironmentPrefix + member.key]
                        ?? supplied.environment[DeploymentInputs.secureEnvironmentPrefix + member.key.uppercased()] {
                guard let node = ParameterTypes.convert(text, to: type) else {
                    sink.error(path, "expected a value of type \(type) in \(DeploymentInputs.secureEnvironmentPrefix)\(member.key), found another")
                    problems[key] = ""
                    continue
                }
                values[key] = node
            } else if let defaultValue = definition.value("defaultValue") {
                values[key] = defaultValue
                defaults.insert(key)
            } else if nullable {
                values[key] = JSONNode(.null)
            } else {
                // Reported where the parameter is used, so the message names the template path that needs it.
                let hint = secure ? ", a parameter file or the environment variable \(DeploymentInputs.secureEnvironmentPrefix)\(member.key)" : " or a parameter file"
                problems[key] = "expected a value for parameter '\(member.key)' from --parameter \(member.key)=VALUE\(hint), or a defaultValue, found none"
            }
            if secure { secureParameterNames.append(member.key) }
            if secure, let value = values[key] { secrets += ParameterTypes.strings(in: value.value) }
            if let allowed = definition.value("allowedValues")?.value, case .array(let options) = allowed,
               let chosen = values[key], !(defaults.contains(key) && isExpression(chosen)), !(nullable && chosen.value == .null),
               !options.contains(where: { ARMFunctions.equal($0.value, chosen.value) }) {
                sink.error(path, "expected one of the allowedValues \(options.map(\.summary).joined(separator: ", ")), found \(secure ? "***" : chosen.summary)")
            }
            if let chosen = values[key], !(defaults.contains(key) && isExpression(chosen)),
               let problem = ParameterConstraints.problem(chosen.value, declaration: declaration, secure: secure) {
                sink.error(path, problem)
            }
        }
        for given in supplied.text.keys where declared[given.lowercased()] == nil {
            let known = declared.values.sorted().joined(separator: ", ")
            sink.error(supplied.unknownPath, "expected --parameter to name a declared parameter (\(known.isEmpty ? "none declared" : known)), found \"\(given)\"")
        }
        for given in supplied.json.keys.sorted() where declared[given.lowercased()] == nil {
            let known = declared.values.sorted().joined(separator: ", ")
            sink.error(supplied.unknownPath, "expected \(supplied.jsonSource) to name declared parameters only (\(known.isEmpty ? "none declared" : known)), found \"\(given)\"")
        }
        return (values, defaults, problems)
    }

    private func isExpression(_ node: JSONNode) -> Bool {
        guard let text = node.stringValue else { return false }
        return text.hasPrefix("[") && !text.hasPrefix("[[") && text.hasSuffix("]")
    }
}
