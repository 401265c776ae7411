/// Evaluates the part of the ARM template language that imageTemplates deployments use:
/// `parameters('x')`, `variables('x')` and `concat(…)`, with string and integer literals.
/// Anything else is reported with the expression and its path rather than guessed at.
struct ARMEvaluator {
    struct Failure: Error {
        var message: String
    }

    static func unsupported(_ function: String, _ original: String) -> String {
        "expected an ARM expression using parameters(), variables() and concat() only, found \(function)() in \"\(original)\"; replace it with a literal value or a parameter"
    }

    let parameterValues: [String: JSONNode]     // lower-cased name → value (default or override)
    let parameterProblems: [String: String]     // lower-cased name → why it has no value
    let variableNodes: [String: JSONNode]       // lower-cased name → raw value

    /// Replaces every expression string inside `node`. Problems go to `sink` at the path of the string.
    func evaluateTree(_ node: JSONNode, at path: TemplatePath, sink: DiagnosticSink) -> JSONNode {
        switch node.value {
        case .object(let members):
            let evaluated = members.map { member in
                JSONMember(key: member.key, value: evaluateTree(member.value, at: path.appending(member.key), sink: sink))
            }
            return JSONNode(.object(evaluated), at: node.position)
        case .array(let items):
            let evaluated = items.enumerated().map { evaluateTree($0.element, at: path.appending(index: $0.offset), sink: sink) }
            return JSONNode(.array(evaluated), at: node.position)
        case .string(let text):
            do {
                var visiting: Set<String> = []
                guard let value = try evaluateString(text, visiting: &visiting) else { return node }
                return JSONNode(value, at: node.position)
            } catch {
                // An empty message means the cause was already reported (a --parameter of the wrong type).
                if !error.message.isEmpty { sink.error(path, error.message, at: node) }
                sink.poison(path)
                return node
            }
        default:
            return node
        }
    }

    /// nil when `text` is not an expression. "[[" escapes a literal "[".
    private func evaluateString(_ text: String, visiting: inout Set<String>) throws(Failure) -> JSONValue? {
        guard text.hasPrefix("["), text.hasSuffix("]"), text.count >= 2 else { return nil }
        if text.hasPrefix("[[") { return .string(String(text.dropFirst())) }
        let body = String(text.dropFirst().dropLast())
        var parser = ExpressionParser(text: body, original: text)
        let expression = try parser.parseAll()
        return try evaluate(expression, original: text, visiting: &visiting)
    }

    private func evaluate(_ expression: Expression, original: String, visiting: inout Set<String>) throws(Failure) -> JSONValue {
        switch expression {
        case .string(let text): return .string(text)
        case .integer(let text): return .number(text)
        case .call(let name, let arguments):
            switch name.lowercased() {
            case "parameters", "variables":
                guard arguments.count == 1, case .string(let key) = arguments[0] else {
                    throw Failure(message: "expected \(name)('name') with one string literal, found \"\(original)\"")
                }
                return try lookup(function: name.lowercased(), key: key, original: original, visiting: &visiting)
            case "concat":
                var values: [JSONValue] = []
                for argument in arguments { values.append(try evaluate(argument, original: original, visiting: &visiting)) }
                return try concat(values, original: original)
            default:
                throw Failure(message: ARMEvaluator.unsupported(name, original))
            }
        }
    }

    private func lookup(function: String, key: String, original: String, visiting: inout Set<String>) throws(Failure) -> JSONValue {
        let folded = key.lowercased()
        if function == "parameters" {
            if let problem = parameterProblems[folded] { throw Failure(message: problem) }
            guard let value = parameterValues[folded] else {
                throw Failure(message: "expected a parameter named '\(key)' in the template's parameters, found none (in \"\(original)\")")
            }
            return value.value
        }
        guard let node = variableNodes[folded] else {
            throw Failure(message: "expected a variable named '\(key)' in the template's variables, found none (in \"\(original)\")")
        }
        guard visiting.insert("v:" + folded).inserted else {
            throw Failure(message: "expected variables that do not refer to themselves, found '\(key)' in a cycle (in \"\(original)\")")
        }
        defer { visiting.remove("v:" + folded) }
        return try evaluateValue(node.value, visiting: &visiting)
    }

    /// Variables may hold objects and arrays with expressions inside.
    private func evaluateValue(_ value: JSONValue, visiting: inout Set<String>) throws(Failure) -> JSONValue {
        switch value {
        case .string(let text): return try evaluateString(text, visiting: &visiting) ?? value
        case .array(let items):
            var evaluated: [JSONNode] = []
            for item in items { evaluated.append(JSONNode(try evaluateValue(item.value, visiting: &visiting), at: item.position)) }
            return .array(evaluated)
        case .object(let members):
            var evaluated: [JSONMember] = []
            for member in members {
                evaluated.append(JSONMember(key: member.key, value: JSONNode(try evaluateValue(member.value.value, visiting: &visiting), at: member.value.position)))
            }
            return .object(evaluated)
        default: return value
        }
    }

    private func concat(_ values: [JSONValue], original: String) throws(Failure) -> JSONValue {
        if let first = values.first, case .array = first {
            var items: [JSONNode] = []
            for value in values {
                guard case .array(let more) = value else {
                    throw Failure(message: "expected concat() of arrays only or of strings only, found a mix in \"\(original)\"")
                }
                items += more
            }
            return .array(items)
        }
        var text = ""
        for value in values {
            switch value {
            case .string(let part): text += part
            case .number(let part): text += part
            case .bool(let flag): text += flag ? "True" : "False"
            default: throw Failure(message: "expected concat() of strings and numbers, found an object or array in \"\(original)\"")
            }
        }
        return .string(text)
    }
}

indirect enum Expression {
    case string(String)
    case integer(String)
    case call(String, [Expression])
}

/// Parses one ARM expression body (the text between the outer brackets).
struct ExpressionParser {
    private let scalars: [Character]
    private let original: String
    private var index = 0

    init(text: String, original: String) {
        scalars = Array(text)
        self.original = original
    }

    mutating func parseAll() throws(ARMEvaluator.Failure) -> Expression {
        let expression = try parseExpression()
        skipSpaces()
        if index < scalars.count {
            let rest = String(scalars[index...])
            if rest.hasPrefix(".") || rest.hasPrefix("[") {
                throw fail("property and index access (\(rest)) is not supported")
            }
            throw fail("unexpected \"\(rest)\"")
        }
        return expression
    }

    private func fail(_ message: String) -> ARMEvaluator.Failure {
        ARMEvaluator.Failure(message: "expected an ARM expression using parameters(), variables() and concat() only, found \"\(original)\": \(message)")
    }

    private mutating func skipSpaces() {
        while index < scalars.count, scalars[index] == " " { index += 1 }
    }

    private mutating func parseExpression() throws(ARMEvaluator.Failure) -> Expression {
        skipSpaces()
        guard index < scalars.count else { throw fail("expected a value") }
        let character = scalars[index]
        if character == "'" {
            index += 1
            var text = ""
            while true {
                guard index < scalars.count else { throw fail("unterminated string literal") }
                if scalars[index] == "'" {
                    if index + 1 < scalars.count, scalars[index + 1] == "'" {
                        text.append("'")
                        index += 2
                        continue
                    }
                    index += 1
                    return .string(text)
                }
                text.append(scalars[index])
                index += 1
            }
        }
        if character.isNumber || character == "-" {
            var text = String(character)
            index += 1
            while index < scalars.count, scalars[index].isNumber { text.append(scalars[index]); index += 1 }
            return .integer(text)
        }
        guard character.isLetter else { throw fail("unexpected \"\(character)\"") }
        var name = ""
        while index < scalars.count, scalars[index].isLetter || scalars[index].isNumber || scalars[index] == "_" {
            name.append(scalars[index])
            index += 1
        }
        skipSpaces()
        guard index < scalars.count, scalars[index] == "(" else { throw fail("expected \"(\" after \(name)") }
        index += 1
        var arguments: [Expression] = []
        skipSpaces()
        if index < scalars.count, scalars[index] == ")" {
            index += 1
            return try checkedCall(name, arguments)
        }
        while true {
            arguments.append(try parseExpression())
            skipSpaces()
            guard index < scalars.count else { throw fail("expected \")\"") }
            if scalars[index] == "," { index += 1; continue }
            if scalars[index] == ")" { index += 1; return try checkedCall(name, arguments) }
            throw fail("unexpected \"\(scalars[index])\"")
        }
    }

    private func checkedCall(_ name: String, _ arguments: [Expression]) throws(ARMEvaluator.Failure) -> Expression {
        let supported = ["parameters", "variables", "concat"]
        guard supported.contains(name.lowercased()) else {
            throw ARMEvaluator.Failure(message: ARMEvaluator.unsupported(name, original))
        }
        return .call(name, arguments)
    }
}
