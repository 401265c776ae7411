/// Evaluates ARM template expressions (https://learn.microsoft.com/azure/azure-resource-manager/templates/template-expressions):
/// a string that starts with "[" and ends with "]" is an expression, "[[" escapes a literal "[". Function calls,
/// string and integer literals, property access (`.name`, `['name']`) and index access (`[0]`). The functions are in
/// ARMFunctions.swift; one not there is an error naming it and the expression, never a guess.
///
/// Variables are evaluated once each (memoized), so variables that refer to each other cost linear time; evaluation
/// depth and the size of any result are bounded so that a hostile template fails with a message, not a crash.
final class ARMEvaluator {
    struct Failure: Error {
        var message: String
    }

    /// ARM's own limit on a template (4 MB, https://learn.microsoft.com/azure/azure-resource-manager/templates/best-practices#template-limits)
    /// bounds what one expression may build.
    static let maximumResultSize = 4 * 1024 * 1024
    /// Nested calls, and variables that refer to variables, deeper than this are an error (the evaluator recurses).
    static let maximumDepth = 500

    let parameterValues: [String: JSONNode]     // lower-cased name → value (supplied, or defaultValue)
    let defaultParameters: Set<String>          // lower-cased names whose value is a defaultValue (may hold expressions)
    let parameterProblems: [String: String]     // lower-cased name → why it has no value
    let variableNodes: [String: JSONNode]       // lower-cased name → raw value
    /// Lower-cased names of variables defined by a loop at the top of `variables`: their node is `{"copy": [loop]}`,
    /// and their value the array that gives.
    let loopVariableNames: Set<String>
    let context: DeploymentContext
    let deploymentName: String
    /// The template's user-defined functions by lower-cased `namespace.member` (ARMUserFunctions.swift).
    let userFunctions: [String: UserFunction]
    /// languageVersion 2.0: user-defined functions may call each other (ARMUserFunctions.swift).
    let userFunctionsMayCallEachOther: Bool

    private var variableCache: [String: JSONValue] = [:]
    private var parameterCache: [String: JSONValue] = [:]
    private var visiting: Set<String> = []
    private var depth = 0
    /// utcNow() is allowed in parameter defaults only, as in ARM.
    private var inParameterDefault = false
    /// The resource copy loop being expanded: its name and this copy's index, for copyIndex().
    var copyLoop: (name: String, index: Int)?
    /// The user-defined function being evaluated and its arguments by lower-cased parameter name.
    var functionFrame: (function: UserFunction, arguments: [String: JSONValue])?
    /// The parameters of the lambdas being applied, innermost last (ARMLambdas.swift).
    var lambdaScopes: [[String: JSONValue]] = []
    /// The property copy loops being expanded, innermost last: their names and this element's index.
    var propertyLoops: [(name: String, index: Int)] = []

    init(parameterValues: [String: JSONNode], defaultParameters: Set<String> = [], parameterProblems: [String: String],
         variableNodes: [String: JSONNode], context: DeploymentContext = DeploymentContext(), deploymentName: String = "template",
         userFunctions: [String: UserFunction] = [:], userFunctionsMayCallEachOther: Bool = false, loopVariableNames: Set<String> = []) {
        self.parameterValues = parameterValues
        self.defaultParameters = defaultParameters
        self.parameterProblems = parameterProblems
        self.variableNodes = variableNodes
        self.context = context
        self.deploymentName = deploymentName
        self.userFunctions = userFunctions
        self.userFunctionsMayCallEachOther = userFunctionsMayCallEachOther
        self.loopVariableNames = loopVariableNames
    }

    /// Replaces every expression inside `node`, in values and in property names. Problems go to `sink` at the
    /// path of the string.
    func evaluateTree(_ node: JSONNode, at path: TemplatePath, sink: DiagnosticSink) -> JSONNode {
        switch node.value {
        case .object(let members):
            var evaluated: [JSONMember] = []
            evaluated.reserveCapacity(members.count)
            for member in members {
                // A "copy" array is a property loop (ARMPropertyCopy.swift); a resource's own copy object never gets here.
                if member.key.caseInsensitiveEquals("copy"), case .array(let loops) = member.value.value {
                    evaluated += propertyCopies(loops, at: path.appending(member.key), parent: path, sink: sink)
                    continue
                }
                var key = member.key
                do throws(Failure) {
                    if let value = try evaluateString(member.key) {
                        guard case .string(let text) = value else {
                            throw Failure(message: "expected a property name expression that gives a string, found \(JSONNode(value).summary) from \"\(member.key)\"")
                        }
                        key = text
                    }
                } catch {
                    sink.error(path.appending(member.key), error.message, at: member.value)
                    sink.poison(path.appending(member.key))
                }
                evaluated.append(JSONMember(key: key, value: evaluateTree(member.value, at: path.appending(key), sink: sink)))
            }
            return JSONNode(.object(evaluated), at: node.position)
        case .array(let items):
            let evaluated = items.enumerated().map { evaluateTree($0.element, at: path.appending(index: $0.offset), sink: sink) }
            return JSONNode(.array(evaluated), at: node.position)
        case .string(let text):
            do {
                guard let value = try evaluateString(text) else { return node }
                if ARMFunctions.holdsPlaceholder(value) {
                    sink.warning(path, "\"\(text)\" needs reference() or list*(), whose live value Kiln cannot know offline; read as the placeholder \(JSONNode(value).summary), not checked against Azure", at: node)
                }
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

    /// nil when `text` is not an expression.
    func evaluateString(_ text: String) throws(Failure) -> JSONValue? {
        guard text.hasPrefix("["), text.hasSuffix("]"), text.count >= 2 else { return nil }
        if text.hasPrefix("[[") { return .string(String(text.dropFirst())) }
        var parser = ExpressionParser(text: String(text.dropFirst().dropLast()), original: text)
        let expression = try parser.parseAll()
        return try evaluate(expression, original: text)
    }

    /// Evaluates the expressions inside a value (variables and parameter defaults may hold objects and arrays).
    func evaluateValue(_ value: JSONValue) throws(Failure) -> JSONValue {
        try descend()
        defer { depth -= 1 }
        switch value {
        case .string(let text): return try evaluateString(text) ?? value
        case .array(let items):
            var evaluated: [JSONNode] = []
            for item in items { evaluated.append(JSONNode(try evaluateValue(item.value), at: item.position)) }
            return .array(evaluated)
        case .object(let members):
            var evaluated: [JSONMember] = []
            for member in members {
                if member.key.caseInsensitiveEquals("copy"), case .array(let loops) = member.value.value {
                    evaluated += try variableCopies(loops)
                    continue
                }
                var key = member.key
                if let name = try evaluateString(member.key) {
                    guard case .string(let text) = name else {
                        throw Failure(message: "expected a property name expression that gives a string, found \(JSONNode(name).summary) from \"\(member.key)\"")
                    }
                    key = text
                }
                evaluated.append(JSONMember(key: key, value: JSONNode(try evaluateValue(member.value.value), at: member.value.position)))
            }
            return .object(evaluated)
        default: return value
        }
    }

    private func descend() throws(Failure) {
        guard depth < ARMEvaluator.maximumDepth else {
            throw Failure(message: "expected expressions and variables nested at most \(ARMEvaluator.maximumDepth) deep, found deeper nesting")
        }
        depth += 1
    }

    func evaluate(_ expression: Expression, original: String) throws(Failure) -> JSONValue {
        try descend()
        defer { depth -= 1 }
        switch expression {
        case .string(let text): return .string(text)
        case .integer(let text): return .number(text)
        case .index(let base, let key):
            let container = try evaluate(base, original: original)
            let selector = try evaluate(key, original: original)
            return try access(container, selector, original: original)
        case .property(let base, let name):
            return try access(try evaluate(base, original: original), .string(name), original: original)
        case .call(let name, let arguments) where name.contains("."):
            return try callUserFunction(name, arguments, original: original)
        case .call(let name, let arguments):
            let folded = name.lowercased()
            switch folded {
            case "parameters", "variables":
                guard arguments.count == 1 else {
                    throw Failure(message: "expected \(name)('name') with one argument, found \(arguments.count) in \"\(original)\"")
                }
                guard case .string(let key) = try evaluate(arguments[0], original: original) else {
                    throw Failure(message: "expected \(name)() of a string, found another value in \"\(original)\"")
                }
                return try lookup(function: folded, key: key, original: original)
            case "if":
                // Only the branch the condition picks is evaluated, as ARM does.
                guard arguments.count == 3 else { throw Failure(message: "expected if(condition, trueValue, falseValue), found \(arguments.count) arguments in \"\(original)\"") }
                guard case .bool(let condition) = try evaluate(arguments[0], original: original) else {
                    throw Failure(message: "expected a bool as the condition of if(), found another value in \"\(original)\"")
                }
                return try evaluate(arguments[condition ? 1 : 2], original: original)
            case "copyindex":
                return try copyIndex(arguments, original: original)
            case _ where ARMEvaluator.lambdaFunctionNames.contains(folded):
                // The lambda's body is evaluated per element, so the arguments are not evaluated here.
                return try lambdaFunction(folded, name: name, arguments, original: original)
            case "utcnow" where !inParameterDefault:
                throw Failure(message: "expected utcNow() only in a parameter's defaultValue (ARM's rule), found it in \"\(original)\"")
            default:
                var values: [JSONValue] = []
                for argument in arguments { values.append(try evaluate(argument, original: original)) }
                let result = try ARMFunctions.call(folded, name: name, values, evaluator: self, original: original)
                try checkSize(result, original: original)
                return result
            }
        }
    }

    /// copyIndex(), copyIndex(offset), copyIndex('loopName'[, offset]): the zero-based iteration plus the offset
    /// (https://learn.microsoft.com/azure/azure-resource-manager/templates/template-functions-numeric#copyindex).
    private func copyIndex(_ arguments: [Expression], original: String) throws(Failure) -> JSONValue {
        var values: [JSONValue] = []
        for argument in arguments { values.append(try evaluate(argument, original: original)) }
        // With a loop name: the property loop of that name (innermost first), else the resource's; without one: the
        // resource's loop, else the innermost property loop.
        let named: String? = if values.count >= 1, case .string(let text) = values[0] { text } else { nil }
        let propertyLoop = named.flatMap { name in propertyLoops.last { $0.name.caseInsensitiveEquals(name) } }
        guard let loop = propertyLoop ?? copyLoop ?? propertyLoops.last else {
            throw Failure(message: "expected copyIndex() inside a resource or property with a copy loop, found it outside one in \"\(original)\"")
        }
        var offset = 0
        switch values.count {
        case 0: break
        case 1 where values[0].intValue != nil: offset = values[0].intValue ?? 0
        case 1, 2:
            guard case .string(let name) = values[0], values.count == 1 || values[1].intValue != nil else {
                throw Failure(message: "expected copyIndex([loopName], [offset]), found \(ARMFunctions.describe(values)) in \"\(original)\"")
            }
            guard name.caseInsensitiveEquals(loop.name) else {
                throw Failure(message: "expected copyIndex() of the loop '\(loop.name)', found '\(name)' in \"\(original)\"")
            }
            offset = values.count == 2 ? values[1].intValue ?? 0 : 0
        default:
            throw Failure(message: "expected copyIndex([loopName], [offset]), found \(values.count) arguments in \"\(original)\"")
        }
        return .number(String(loop.index + offset))
    }

    private func access(_ container: JSONValue, _ selector: JSONValue, original: String) throws(Failure) -> JSONValue {
        if let member = ARMFunctions.placeholderMember(container, selector) { return member }
        switch (container, selector) {
        case (.object(let members), .string(let key)):
            // Property names match without regard to case, as everywhere in ARM.
            guard let member = members.first(where: { $0.key.caseInsensitiveEquals(key) }) else {
                let known = members.map(\.key).joined(separator: ", ")
                throw Failure(message: "expected a property '\(key)' (the object has \(known.isEmpty ? "none" : known)), found none in \"\(original)\"")
            }
            return member.value.value
        case (.array(let items), .number(let text)):
            guard let index = Int(text), items.indices.contains(index) else {
                throw Failure(message: "expected an index from 0 to \(items.count - 1), found \(text) in \"\(original)\"")
            }
            return items[index].value
        default:
            throw Failure(message: "expected a property of an object or an index into an array, found \(JSONNode(selector).summary) applied to \(JSONNode(container).summary) in \"\(original)\"")
        }
    }

    private func lookup(function: String, key: String, original: String) throws(Failure) -> JSONValue {
        let folded = key.lowercased()
        if let frame = functionFrame {
            // ARM's rules for user-defined functions; the declaration check reports them first.
            guard function == "parameters", let value = frame.arguments[folded] else {
                throw Failure(message: "expected only the parameters of the user-defined function \(frame.function.name), found \(function)('\(key)') in \"\(original)\"")
            }
            return value
        }
        if function == "parameters" {
            if let problem = parameterProblems[folded] { throw Failure(message: problem) }
            guard let value = parameterValues[folded] else {
                throw Failure(message: "expected a parameter named '\(key)' in the template's parameters, found none (in \"\(original)\")")
            }
            guard defaultParameters.contains(folded) else { return value.value }
            if let cached = parameterCache[folded] { return cached }
            let result = try guarded("p:" + folded, what: "parameters whose defaults", name: key, original: original) { () throws(Failure) in
                let outer = inParameterDefault
                inParameterDefault = true
                defer { inParameterDefault = outer }
                return try evaluateValue(value.value)
            }
            parameterCache[folded] = result
            return result
        }
        if let cached = variableCache[folded] { return cached }
        guard let node = variableNodes[folded] else {
            throw Failure(message: "expected a variable named '\(key)' in the template's variables, found none (in \"\(original)\")")
        }
        let result = try guarded("v:" + folded, what: "variables that", name: key, original: original) { () throws(Failure) in
            let outer = inParameterDefault
            inParameterDefault = false
            defer { inParameterDefault = outer }
            return try evaluateValue(node.value)
        }
        try checkSize(result, original: original)
        if loopVariableNames.contains(folded), case .object(let members) = result, let loop = members.first {
            variableCache[folded] = loop.value.value
            return loop.value.value
        }
        variableCache[folded] = result
        return result
    }

    private func guarded(_ key: String, what: String, name: String, original: String,
                         _ body: () throws(Failure) -> JSONValue) throws(Failure) -> JSONValue {
        guard visiting.insert(key).inserted else {
            throw Failure(message: "expected \(what) do not refer to themselves, found '\(name)' in a cycle (in \"\(original)\")")
        }
        defer { visiting.remove(key) }
        return try body()
    }

    func checkSize(_ value: JSONValue, original: String) throws(Failure) {
        var budget = ARMEvaluator.maximumResultSize
        guard ARMEvaluator.fits(value, budget: &budget) else {
            throw Failure(message: "expected an expression result of at most \(ARMEvaluator.maximumResultSize / 1024 / 1024) MiB, found a larger one in \"\(original)\"")
        }
    }

    /// Walks at most `budget` bytes' worth of the value: the cost of a check is bounded by the limit.
    static func fits(_ value: JSONValue, budget: inout Int) -> Bool {
        switch value {
        case .string(let text): budget -= text.utf8.count + 2
        case .number(let text): budget -= text.utf8.count
        case .bool, .null: budget -= 4
        case .array(let items):
            budget -= 2
            for item in items where budget >= 0 {
                guard fits(item.value, budget: &budget) else { return false }
            }
        case .object(let members):
            budget -= 2
            for member in members where budget >= 0 {
                budget -= member.key.utf8.count + 3
                guard fits(member.value.value, budget: &budget) else { return false }
            }
        }
        return budget >= 0
    }
}
