/// The lambda functions (https://learn.microsoft.com/azure/azure-resource-manager/templates/template-functions-lambda):
/// `filter`, `map`, `reduce`, `sort` and `toObject` take an array and `lambda('name', …, expression)`, whose
/// parameters the expression reads with `lambdaVariables('name')`. The lambda is evaluated once per element, lazily,
/// in the scope of the call (template parameters and variables stay visible, as in ARM). `map`, `filter` and `reduce`
/// also pass the element's index when the lambda declares one more parameter. `tryGet(object, key…)` is here too:
/// the value at the key, or null when the object (or any step) is null or lacks it
/// (https://learn.microsoft.com/azure/azure-resource-manager/templates/template-functions-object#tryget).
extension ARMEvaluator {
    static let lambdaFunctionNames: Set<String> = ["filter", "map", "reduce", "sort", "toobject", "lambda", "lambdavariables", "tryget"]

    struct Lambda {
        var parameters: [String]   // lower-cased
        var body: Expression
    }

    func lambdaFunction(_ folded: String, name: String, _ arguments: [Expression], original: String) throws(Failure) -> JSONValue {
        func fail(_ what: String) -> Failure { Failure(message: "expected \(name)(\(what)), found \(arguments.count) argument(s) in \"\(original)\"") }
        func array(_ expression: Expression) throws(Failure) -> [JSONNode] {
            let value = try evaluate(expression, original: original)
            guard case .array(let items) = value else {
                throw Failure(message: "expected an array as the first argument of \(name)(), found \(JSONNode(value).summary) in \"\(original)\"")
            }
            return items
        }
        switch folded {
        case "lambda":
            throw Failure(message: "expected lambda() only as an argument of filter, map, reduce, sort or toObject, found it elsewhere in \"\(original)\"")
        case "lambdavariables":
            guard arguments.count == 1, case .string(let variable) = try evaluate(arguments[0], original: original) else { throw fail("'name'") }
            for scope in lambdaScopes.reversed() {
                if let value = scope[variable.lowercased()] { return value }
            }
            let known = lambdaScopes.flatMap(\.keys).sorted().joined(separator: ", ")
            throw Failure(message: "expected lambdaVariables() to name a parameter of an enclosing lambda (\(known.isEmpty ? "none: it is outside a lambda" : known)), found '\(variable)' in \"\(original)\"")
        case "tryget":
            guard arguments.count >= 2 else { throw fail("itemToTest, keyOrIndex, …") }
            var value = try evaluate(arguments[0], original: original)
            for argument in arguments.dropFirst() {
                let key = try evaluate(argument, original: original)
                switch (value, key) {
                case (.object(let members), .string(let text)):
                    value = members.first(where: { $0.key.caseInsensitiveEquals(text) })?.value.value ?? .null
                case (.array(let items), .number(let text)):
                    guard let index = Int(text), items.indices.contains(index) else { return .null }
                    value = items[index].value
                case (.null, _):
                    return .null
                default:
                    throw Failure(message: "expected tryGet() of an object with a string key or an array with an integer index, found \(JSONNode(key).summary) applied to \(JSONNode(value).summary) in \"\(original)\"")
                }
            }
            return value
        case "map", "filter":
            guard arguments.count == 2 else { throw fail("inputArray, lambda") }
            let items = try array(arguments[0])
            let lambda = try readLambda(arguments[1], arity: 1...2, function: name, original: original)
            var result: [JSONNode] = []
            for (index, item) in items.enumerated() {
                let value = try apply(lambda, [item.value, .number(String(index))], original: original)
                if folded == "map" {
                    result.append(JSONNode(value))
                } else {
                    guard case .bool(let keep) = value else {
                        throw Failure(message: "expected the lambda of filter() to give a bool, found \(JSONNode(value).summary) in \"\(original)\"")
                    }
                    if keep { result.append(item) }
                }
            }
            return .array(result)
        case "reduce":
            guard arguments.count == 3 else { throw fail("inputArray, initialValue, lambda") }
            let items = try array(arguments[0])
            var accumulated = try evaluate(arguments[1], original: original)
            let lambda = try readLambda(arguments[2], arity: 2...3, function: name, original: original)
            for (index, item) in items.enumerated() {
                accumulated = try apply(lambda, [accumulated, item.value, .number(String(index))], original: original)
            }
            return accumulated
        case "sort":
            guard arguments.count == 2 else { throw fail("inputArray, lambda") }
            let items = try array(arguments[0])
            let lambda = try readLambda(arguments[1], arity: 2...2, function: name, original: original)
            func isLess(_ lhs: JSONNode, _ rhs: JSONNode) throws(Failure) -> Bool {
                let less = try apply(lambda, [lhs.value, rhs.value], original: original)
                guard case .bool(let flag) = less else {
                    throw Failure(message: "expected the lambda of sort() to give a bool, found \(JSONNode(less).summary) in \"\(original)\"")
                }
                return flag
            }
            // A stable bottom-up merge sort: O(n log n) calls of the lambda, which may throw.
            var sorted = items
            var width = 1
            while width < sorted.count {
                var merged: [JSONNode] = []
                merged.reserveCapacity(sorted.count)
                var start = 0
                while start < sorted.count {
                    let middle = min(start + width, sorted.count), end = min(start + 2 * width, sorted.count)
                    var (left, right) = (start, middle)
                    while left < middle && right < end {
                        if try isLess(sorted[right], sorted[left]) {
                            merged.append(sorted[right]); right += 1
                        } else {
                            merged.append(sorted[left]); left += 1
                        }
                    }
                    merged += sorted[left..<middle]
                    merged += sorted[right..<end]
                    start = end
                }
                sorted = merged
                width *= 2
            }
            return .array(sorted)
        case "toobject":
            guard arguments.count == 2 || arguments.count == 3 else { throw fail("inputArray, keyLambda[, valueLambda]") }
            let items = try array(arguments[0])
            let key = try readLambda(arguments[1], arity: 1...1, function: name, original: original)
            let value = try arguments.count == 3 ? readLambda(arguments[2], arity: 1...1, function: name, original: original) : nil
            var members: [JSONMember] = []
            for item in items {
                guard case .string(let text) = try apply(key, [item.value], original: original) else {
                    throw Failure(message: "expected the key lambda of toObject() to give a string in \"\(original)\"")
                }
                var element = item.value
                if let value { element = try apply(value, [item.value], original: original) }
                members.removeAll { $0.key.caseInsensitiveEquals(text) }
                members.append(JSONMember(key: text, value: JSONNode(element)))
            }
            return .object(members)
        default:
            throw Failure(message: ARMFunctions.unsupported(name, original))
        }
    }

    private func readLambda(_ expression: Expression, arity: ClosedRange<Int>, function: String, original: String) throws(Failure) -> Lambda {
        guard case .call(let callee, let arguments) = expression, callee.caseInsensitiveEquals("lambda"), arguments.count >= 2 else {
            throw Failure(message: "expected lambda('name', …, expression) as an argument of \(function)(), found another value in \"\(original)\"")
        }
        var parameters: [String] = []
        for argument in arguments.dropLast() {
            guard case .string(let parameter) = argument else {
                throw Failure(message: "expected lambda() parameter names as string literals, found another value in \"\(original)\"")
            }
            parameters.append(parameter.lowercased())
        }
        guard arity.contains(parameters.count) else {
            throw Failure(message: "expected a lambda with \(arity.lowerBound == arity.upperBound ? "\(arity.lowerBound)" : "\(arity.lowerBound) or \(arity.upperBound)") parameter(s) for \(function)(), found \(parameters.count) in \"\(original)\"")
        }
        return Lambda(parameters: parameters, body: arguments[arguments.count - 1])
    }

    /// Binds the lambda's parameters to the first values (extra values, such as an index it does not declare, are
    /// dropped) and evaluates its body.
    private func apply(_ lambda: Lambda, _ values: [JSONValue], original: String) throws(Failure) -> JSONValue {
        var scope: [String: JSONValue] = [:]
        for (parameter, value) in zip(lambda.parameters, values) { scope[parameter] = value }
        lambdaScopes.append(scope)
        defer { lambdaScopes.removeLast() }
        let result = try evaluate(lambda.body, original: original)
        try checkSize(result, original: original)
        return result
    }
}
