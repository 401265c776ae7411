/// User-defined functions: a template's `functions` section
/// (https://learn.microsoft.com/azure/azure-resource-manager/templates/user-defined-functions), called as
/// `namespace.member(arguments)`. The documented limitations are ARM's rules, checked where the function is declared
/// (so an unused function that breaks them is still reported, as the deployment engine does):
/// - a function can't access variables;
/// - it can only use its own parameters (`parameters('x')` names one of them, never a template parameter);
/// - it can't call other user-defined functions (the ARM page's rule for languageVersion 1.0; Bicep's user-defined
///   functions, which generate languageVersion 2.0 templates, may call each other, and the engine evaluates those, so
///   in a 2.0 template calls between functions are evaluated, nested at most ARMEvaluator.maximumDepth deep);
/// - it can't use `reference()` or any `list*()` function;
/// - its parameters can't have default values.
/// Names of namespaces, functions and parameters match without regard to case, as everywhere in ARM.
struct UserFunction {
    struct Parameter {
        var name: String
        var type: String   // lower-cased ARM type
    }

    /// As declared: `contoso.uniqueName`.
    var name: String
    var parameters: [Parameter]
    var outputType: String   // lower-cased ARM type
    var output: JSONNode
    /// `functions[0].members.uniqueName`, for messages.
    var path: TemplatePath
    /// False when the declaration broke a rule (already reported there): a call to it is not evaluated.
    var isValid = true
}

enum UserFunctions {
    /// Reads the `functions` array; the result is keyed by the lower-cased `namespace.member`.
    static func read(_ node: JSONNode?, at path: TemplatePath, sink: DiagnosticSink, mayCallEachOther: Bool = false) -> [String: UserFunction] {
        guard let node else { return [:] }
        guard case .array(let namespaces) = node.value else {
            sink.error(path, "expected an array of {namespace, members} objects, found \(node.summary)", at: node)
            return [:]
        }
        var functions: [String: UserFunction] = [:]
        for (index, item) in namespaces.enumerated() {
            let itemPath = path.appending(index: index)
            guard let reader = ObjectReader(item, at: itemPath, sink: sink, expected: "a {namespace, members} object") else { continue }
            let namespace = reader.string("namespace", required: true, expected: "a namespace name such as \"contoso\"")
            let members = reader.object("members", required: true, expected: "an object of functions by name")
            reader.reportUnknown()
            guard let namespace, let members else { continue }
            for member in members.node.members ?? [] {
                let memberPath = members.path(member.key)
                guard let function = readFunction(member.value, name: "\(namespace).\(member.key)", at: memberPath, sink: sink, nested: mayCallEachOther) else { continue }
                let key = function.name.lowercased()
                if let earlier = functions[key] {
                    sink.error(memberPath, "expected each user-defined function once, found \(function.name) again (first at \(earlier.path))", at: member.value)
                    continue
                }
                functions[key] = function
            }
        }
        return functions
    }

    private static func readFunction(_ node: JSONNode, name: String, at path: TemplatePath, sink: DiagnosticSink, nested: Bool) -> UserFunction? {
        guard let reader = ObjectReader(node, at: path, sink: sink, expected: "a function object with parameters and output") else { return nil }
        var parameters: [UserFunction.Parameter] = []
        var valid = true
        for (index, item) in (reader.array("parameters", expected: "an array of {name, type} objects") ?? []).enumerated() {
            let parameterPath = reader.path("parameters").appending(index: index)
            guard let parameter = ObjectReader(item, at: parameterPath, sink: sink, expected: "a {name, type} object") else { valid = false; continue }
            let parameterName = parameter.string("name", required: true, expected: "a parameter name")
            let type = parameter.string("type", required: true, expected: "an ARM type such as \"string\"")
            if let defaultValue = parameter.value("defaultValue") {
                sink.error(parameterPath.appending("defaultValue"), "expected no default value: parameters of a user-defined function can't have one (ARM's rule), found \(defaultValue.summary)", at: defaultValue)
                valid = false
            }
            _ = parameter.value("metadata")
            parameter.reportUnknown()
            guard let parameterName, let type else { valid = false; continue }
            if parameters.contains(where: { $0.name.caseInsensitiveEquals(parameterName) }) {
                sink.error(parameterPath.appending("name"), "expected each parameter of \(name) once, found '\(parameterName)' again", at: item)
                valid = false
            }
            parameters.append(.init(name: parameterName, type: type.lowercased()))
        }
        _ = reader.value("metadata")
        let output = reader.object("output", required: true, expected: "an object with type and value")
        reader.reportUnknown()
        guard let output else { return nil }
        let outputType = output.string("type", required: true, expected: "an ARM type such as \"string\"")
        let value = output.value("value")
        if value == nil { output.missing("value", "the function's result (usually an expression)") }
        output.reportUnknown()
        guard let outputType, let value else { return nil }
        valid = checkBody(value, at: output.path("value"), function: name, parameters: parameters, nested: nested, sink: sink) && valid
        return UserFunction(name: name, parameters: parameters, outputType: outputType.lowercased(), output: value, path: path, isValid: valid)
    }

    /// The limitations, checked on every expression in the output value.
    private static func checkBody(_ node: JSONNode, at path: TemplatePath, function: String, parameters: [UserFunction.Parameter],
                                  nested: Bool, sink: DiagnosticSink) -> Bool {
        switch node.value {
        case .array(let items):
            var valid = true
            for (index, item) in items.enumerated() {
                valid = checkBody(item, at: path.appending(index: index), function: function, parameters: parameters, nested: nested, sink: sink) && valid
            }
            return valid
        case .object(let members):
            var valid = true
            for member in members {
                valid = checkText(member.key, node: member.value, at: path.appending(member.key), function: function, parameters: parameters, nested: nested, sink: sink) && valid
                valid = checkBody(member.value, at: path.appending(member.key), function: function, parameters: parameters, nested: nested, sink: sink) && valid
            }
            return valid
        case .string(let text):
            return checkText(text, node: node, at: path, function: function, parameters: parameters, nested: nested, sink: sink)
        default:
            return true
        }
    }

    private static func checkText(_ text: String, node: JSONNode, at path: TemplatePath, function: String,
                                  parameters: [UserFunction.Parameter], nested: Bool, sink: DiagnosticSink) -> Bool {
        guard text.hasPrefix("["), text.hasSuffix("]"), text.count >= 2, !text.hasPrefix("[[") else { return true }
        var parser = ExpressionParser(text: String(text.dropFirst().dropLast()), original: text)
        do {
            let expression = try parser.parseAll()
            if let problem = problem(in: expression, function: function, parameters: parameters, nested: nested) {
                sink.error(path, "\(problem) in \"\(text)\"", at: node)
                return false
            }
            return true
        } catch {
            sink.error(path, error.message, at: node)
            return false
        }
    }

    private static func problem(in expression: Expression, function: String, parameters: [UserFunction.Parameter], nested: Bool) -> String? {
        switch expression {
        case .string, .integer:
            return nil
        case .property(let base, _):
            return problem(in: base, function: function, parameters: parameters, nested: nested)
        case .index(let base, let key):
            return problem(in: base, function: function, parameters: parameters, nested: nested) ?? problem(in: key, function: function, parameters: parameters, nested: nested)
        case .call(let name, let arguments):
            let folded = name.lowercased()
            if name.contains("."), !nested {
                return "expected only built-in functions in the user-defined function \(function): it can't call other user-defined functions (ARM's rule for languageVersion 1.0; a languageVersion 2.0 template may), found \(name)()"
            }
            if folded == "variables" {
                return "expected no variables() in the user-defined function \(function): it can't access the template's variables (ARM's rule)"
            }
            if ARMFunctions.isLiveLookup(folded) {
                return "expected no \(name)() in the user-defined function \(function): it can't use reference() or the list functions (ARM's rule)"
            }
            if folded == "parameters", arguments.count == 1, case .string(let key) = arguments[0],
               !parameters.contains(where: { $0.name.caseInsensitiveEquals(key) }) {
                let own = parameters.map(\.name).joined(separator: ", ")
                return "expected parameters() to name one of the function's own parameters (\(own.isEmpty ? "none declared" : own)): a user-defined function can't use the template's parameters (ARM's rule), found '\(key)'"
            }
            for argument in arguments {
                if let found = problem(in: argument, function: function, parameters: parameters, nested: nested) { return found }
            }
            return nil
        }
    }
}

extension ARMEvaluator {
    /// `namespace.member(arguments)`: the arguments are evaluated here, the output value in the function's own scope
    /// (its parameters only; the declaration was checked against ARM's limitations when it was read).
    func callUserFunction(_ name: String, _ arguments: [Expression], original: String) throws(Failure) -> JSONValue {
        if let frame = functionFrame, !userFunctionsMayCallEachOther {
            throw Failure(message: "expected only built-in functions in the user-defined function \(frame.function.name): it can't call other user-defined functions (ARM's rule for languageVersion 1.0), found \(name)() in \"\(original)\"")
        }
        guard let function = userFunctions[name.lowercased()] else {
            let known = userFunctions.values.map(\.name).sorted().joined(separator: ", ")
            throw Failure(message: "expected a function declared in the template's functions section (\(known.isEmpty ? "none declared" : known)), found \(name)() in \"\(original)\"")
        }
        // An empty message: the declaration's error was reported where it is.
        guard function.isValid else { throw Failure(message: "") }
        guard arguments.count == function.parameters.count else {
            throw Failure(message: "expected \(function.parameters.count) argument(s) for \(function.name)(\(function.parameters.map(\.name).joined(separator: ", "))) declared at \(function.path), found \(arguments.count) in \"\(original)\"")
        }
        var values: [String: JSONValue] = [:]
        for (parameter, argument) in zip(function.parameters, arguments) {
            let value = try evaluate(argument, original: original)
            guard ParameterTypes.matches(value, parameter.type) else {
                throw Failure(message: "expected a \(parameter.type) for the parameter '\(parameter.name)' of \(function.name) (declared at \(function.path)), found \(JSONNode(value).summary) in \"\(original)\"")
            }
            values[parameter.name.lowercased()] = value
        }
        let callerFrame = functionFrame
        functionFrame = (function, values)
        defer { functionFrame = callerFrame }
        let result: JSONValue
        do {
            result = try evaluateValue(function.output.value)
        } catch {
            throw Failure(message: "\(function.name)() (declared at \(function.path)): \(error.message); called in \"\(original)\"")
        }
        guard ParameterTypes.matches(result, function.outputType) else {
            throw Failure(message: "expected \(function.name)() to give its declared output type \(function.outputType) (\(function.path).output.type), found \(JSONNode(result).summary) in \"\(original)\"")
        }
        return result
    }
}
