import Foundation

/// The ARM template functions Kiln evaluates, with the documented semantics:
/// https://learn.microsoft.com/azure/azure-resource-manager/templates/template-functions (string, logical,
/// comparison, array, object, resource, scope, date and deployment pages). `parameters`, `variables` and `if` are
/// evaluated in ARMEvaluator (they need the scope or laziness).
enum ARMFunctions {
    typealias Failure = ARMEvaluator.Failure

    static let names: Set<String> = [
        "parameters", "variables", "if", "concat", "format", "uri", "tolower", "toupper", "replace", "split", "string",
        "int", "bool", "equals", "not", "and", "or", "empty", "length", "uniquestring", "guid", "utcnow", "union",
        "createarray", "createobject", "resourceid", "subscriptionresourceid", "resourcegroup", "subscription",
        "deployment", "true", "false", "null", "contains", "startswith", "endswith", "trim", "substring", "first", "last",
        "coalesce", "json",
    ]

    static func unsupported(_ function: String, _ original: String) -> String {
        "expected an ARM function Kiln evaluates (\(names.union(moreNames).union(ARMEvaluator.lambdaFunctionNames).sorted().joined(separator: ", ")), list*), found \(function)() in \"\(original)\"; replace it with a literal value or a parameter"
    }

    // swiftlint:disable:next cyclomatic_complexity function_body_length
    static func call(_ folded: String, name: String, _ args: [JSONValue], evaluator: ARMEvaluator, original: String) throws(Failure) -> JSONValue {
        func fail(_ what: String) -> Failure { Failure(message: "expected \(name)(\(what)), found \(describe(args)) in \"\(original)\"") }
        func strings() throws(Failure) -> [String] {
            var texts: [String] = []
            for arg in args {
                guard case .string(let text) = arg else { throw fail("string arguments") }
                texts.append(text)
            }
            return texts
        }
        func count(_ range: ClosedRange<Int>, _ what: String) throws(Failure) {
            guard range.contains(args.count) else { throw fail(what) }
        }
        switch folded {
        case "true": try count(0...0, ""); return .bool(true)
        case "false": try count(0...0, ""); return .bool(false)
        case "null": try count(0...0, ""); return .null
        case "concat":
            return try concat(args, fail: fail("strings and numbers, or arrays"))
        case "format":
            guard let first = args.first, case .string(let format) = first else { throw fail("formatString, arguments…") }
            return .string(try ARMFormat.composite(format, Array(args.dropFirst()), fail: fail("a formatString whose {n} items name given arguments")))
        case "uri":
            try count(2...2, "baseUri, relativeUri")
            let parts = try strings()
            return .string(ARMFormat.uri(parts[0], parts[1]))
        case "tolower", "toupper":
            try count(1...1, "stringToChange")
            let text = try strings()[0]
            return .string(folded == "tolower" ? text.lowercased() : text.uppercased())
        case "replace":
            try count(3...3, "originalString, oldString, newString")
            let parts = try strings()
            guard !parts[1].isEmpty else { throw fail("a non-empty oldString") }
            return .string(parts[0].replacingOccurrences(of: parts[1], with: parts[2]))
        case "split":
            try count(2...2, "inputString, delimiter")
            guard case .string(let input) = args[0] else { throw fail("inputString, delimiter") }
            var delimiters: [String] = []
            switch args[1] {
            case .string(let one): delimiters = [one]
            case .array(let many): delimiters = many.compactMap(\.stringValue)
            default: throw fail("a string or an array of strings as delimiter")
            }
            var pieces = [input]
            for delimiter in delimiters where !delimiter.isEmpty {
                pieces = pieces.flatMap { $0.components(separatedBy: delimiter) }
            }
            return .array(pieces.map { JSONNode(.string($0)) })
        case "string":
            try count(1...1, "valueToConvert")
            return .string(text(args[0]))
        case "int":
            try count(1...1, "valueToConvert")
            switch args[0] {
            case .number(let number) where Int(number) != nil: return .number(number)
            case .string(let value):
                guard let number = Int(value.trimmingSpaces) else { throw fail("a string holding an integer") }
                return .number(String(number))
            default: throw fail("a string or an integer")
            }
        case "bool":
            try count(1...1, "arg1")
            switch args[0] {
            case .bool(let flag): return .bool(flag)
            case .string(let value) where value.lowercased() == "true" || value.lowercased() == "false": return .bool(value.lowercased() == "true")
            case .number(let number) where Int(number) != nil: return .bool(Int(number) != 0)
            default: throw fail("'true', 'false', a bool or an integer")
            }
        case "equals":
            try count(2...2, "arg1, arg2")
            return .bool(equal(args[0], args[1]))
        case "not":
            try count(1...1, "a bool")
            guard case .bool(let flag) = args[0] else { throw fail("a bool") }
            return .bool(!flag)
        case "and", "or":
            guard args.count >= 2 else { throw fail("two or more bools") }
            var flags: [Bool] = []
            for arg in args {
                guard case .bool(let flag) = arg else { throw fail("bools") }
                flags.append(flag)
            }
            return .bool(folded == "and" ? flags.allSatisfy { $0 } : flags.contains(true))
        case "empty":
            try count(1...1, "itemToTest")
            switch args[0] {
            case .null: return .bool(true)
            case .string(let value): return .bool(value.isEmpty)
            case .array(let items): return .bool(items.isEmpty)
            case .object(let members): return .bool(members.isEmpty)
            default: throw fail("a string, array or object")
            }
        case "length":
            try count(1...1, "arg1")
            switch args[0] {
            case .string(let value): return .number(String(value.count))
            case .array(let items): return .number(String(items.count))
            case .object(let members): return .number(String(members.count))
            default: throw fail("a string, array or object")
            }
        case "uniquestring":
            guard !args.isEmpty else { throw fail("baseString, …") }
            return .string(ARMHash.uniqueString(try strings()))
        case "guid":
            guard !args.isEmpty else { throw fail("baseString, …") }
            return .string(ARMHash.guid(try strings()))
        case "utcnow":
            try count(0...1, "[format]")
            let format = args.isEmpty ? "yyyyMMddTHHmmssZ" : (args[0].stringValueOrNil ?? "")
            return .string(ARMFormat.date(Date(), format: format))
        case "union":
            return try union(args, fail: fail("two or more objects, or two or more arrays"))
        case "createarray":
            return .array(args.map { JSONNode($0) })
        case "createobject":
            guard args.count % 2 == 0 else { throw fail("key1, value1, key2, value2, …") }
            var members: [JSONMember] = []
            for pair in stride(from: 0, to: args.count, by: 2) {
                guard case .string(let key) = args[pair] else { throw fail("string keys") }
                members.append(JSONMember(key: key, value: JSONNode(args[pair + 1])))
            }
            return .object(members)
        case "resourceid", "subscriptionresourceid":
            return .string(try resourceID(try strings(), subscriptionLevel: folded == "subscriptionresourceid",
                                          context: evaluator.context, fail: fail("[subscriptionId], [resourceGroupName], resourceType, resourceName1, …")))
        case "resourcegroup": try count(0...0, ""); return evaluator.context.resourceGroupValue
        case "subscription": try count(0...0, ""); return evaluator.context.subscriptionValue
        case "deployment": try count(0...0, ""); return evaluator.context.deploymentValue(name: evaluator.deploymentName)
        case "contains":
            try count(2...2, "container, itemToFind")
            switch args[0] {
            case .string(let value):
                guard case .string(let part) = args[1] else { throw fail("a string to find in a string") }
                return .bool(value.range(of: part, options: .caseInsensitive) != nil || part.isEmpty)
            case .array(let items): return .bool(items.contains { equal($0.value, args[1]) })
            case .object(let members):
                guard case .string(let key) = args[1] else { throw fail("a property name") }
                return .bool(members.contains { $0.key.caseInsensitiveEquals(key) })
            default: throw fail("a string, array or object")
            }
        case "startswith", "endswith":
            try count(2...2, "stringToSearch, stringToFind")
            let parts = try strings().map { $0.lowercased() }
            return .bool(folded == "startswith" ? parts[0].hasPrefix(parts[1]) : parts[0].hasSuffix(parts[1]))
        case "trim":
            try count(1...1, "stringToTrim")
            return .string(String(try strings()[0].trimmingSpaces))
        case "substring":
            try count(2...3, "stringToParse, startIndex, [length]")
            guard case .string(let value) = args[0], let start = args[1].intValue, start >= 0, start <= value.count else { throw fail("a string and a start index within it") }
            let length = args.count == 3 ? args[2].intValue ?? -1 : value.count - start
            guard length >= 0, start + length <= value.count else { throw fail("a length within the string") }
            return .string(String(value.dropFirst(start).prefix(length)))
        case "first", "last":
            try count(1...1, "arg1")
            switch args[0] {
            case .string(let value): return .string((folded == "first" ? value.first : value.last).map(String.init) ?? "")
            case .array(let items): return (folded == "first" ? items.first : items.last)?.value ?? .null
            default: throw fail("a string or an array")
            }
        case "coalesce":
            return args.first { if case .null = $0 { return false } else { return true } } ?? .null
        case "json":
            try count(1...1, "a JSON string")
            guard case .string(let value) = args[0], let node = try? JSONParser.parse(value) else { throw fail("a string holding valid JSON") }
            return node.value
        default:
            if let value = try more(folded, name: name, args, original: original) { return value }
            throw Failure(message: unsupported(name, original))
        }
    }

    static func describe(_ args: [JSONValue]) -> String {
        args.isEmpty ? "no arguments" : args.map { JSONNode($0).summary }.joined(separator: ", ")
    }

    /// string(): strings unchanged; objects and arrays as compact JSON; booleans as .NET prints them ("True").
    static func text(_ value: JSONValue) -> String {
        switch value {
        case .string(let text): return text
        case .number(let text): return text
        case .bool(let flag): return flag ? "True" : "False"
        case .null: return ""
        case .object, .array: return JSONPrinter.compact(JSONNode(value))
        }
    }

    /// equals(): deep equality as the engine's JToken.DeepEquals: strings compare case-sensitively, numbers by
    /// value, object property names without regard to case (ARM's objects are case-insensitive).
    static func equal(_ lhs: JSONValue, _ rhs: JSONValue) -> Bool {
        switch (lhs, rhs) {
        case (.number(let a), .number(let b)): return Double(a) == Double(b)
        case (.array(let a), .array(let b)): return a.count == b.count && zip(a, b).allSatisfy { equal($0.value, $1.value) }
        case (.object(let a), .object(let b)):
            return a.count == b.count && a.allSatisfy { member in
                b.contains { $0.key.caseInsensitiveEquals(member.key) && equal($0.value.value, member.value.value) }
            }
        default: return lhs == rhs
        }
    }

    private static func concat(_ values: [JSONValue], fail: Failure) throws(Failure) -> JSONValue {
        if let first = values.first, case .array = first {
            var items: [JSONNode] = []
            for value in values {
                guard case .array(let more) = value else { throw fail }
                items += more
            }
            return .array(items)
        }
        var output = ""
        for value in values {
            switch value {
            case .string, .number, .bool: output += text(value)
            case .null: break
            default: throw fail
            }
        }
        return .string(output)
    }

    /// union(): arrays concatenated without duplicates; objects merged, later values winning, nested objects merged
    /// recursively (the engine's MergeJsonInsensitive).
    private static func union(_ values: [JSONValue], fail: Failure) throws(Failure) -> JSONValue {
        guard values.count >= 2 else { throw fail }
        switch values[0] {
        case .array:
            var items: [JSONNode] = []
            for value in values {
                guard case .array(let more) = value else { throw fail }
                for item in more where !items.contains(where: { equal($0.value, item.value) }) { items.append(item) }
            }
            return .array(items)
        case .object:
            var merged: JSONValue = .object([])
            for value in values {
                guard case .object = value else { throw fail }
                merged = merge(merged, value)
            }
            return merged
        default: throw fail
        }
    }

    private static func merge(_ base: JSONValue, _ patch: JSONValue) -> JSONValue {
        guard case .object(var members) = base, case .object(let additions) = patch else { return patch }
        for addition in additions {
            if let index = members.firstIndex(where: { $0.key.caseInsensitiveEquals(addition.key) }) {
                members[index].value = JSONNode(merge(members[index].value.value, addition.value.value))
            } else {
                members.append(addition)
            }
        }
        return .object(members)
    }

    /// resourceId([subscriptionId], [resourceGroupName], resourceType, resourceName1, …): the type is the first
    /// argument with a "/"; one name per type segment after the namespace.
    /// https://learn.microsoft.com/azure/azure-resource-manager/templates/template-functions-resource#resourceid
    private static func resourceID(_ args: [String], subscriptionLevel: Bool, context: DeploymentContext, fail: Failure) throws(Failure) -> String {
        guard let typeIndex = args.firstIndex(where: { $0.contains("/") }) else { throw fail }
        let scope = Array(args[..<typeIndex])
        let names = Array(args[(typeIndex + 1)...])
        let segments = args[typeIndex].split(separator: "/").map(String.init)
        guard segments.count >= 2, names.count == segments.count - 1 else { throw fail }
        var subscription = context.subscriptionId
        var group: String? = subscriptionLevel ? nil : context.resourceGroupName
        switch (subscriptionLevel, scope.count) {
        case (_, 0): break
        case (true, 1): subscription = scope[0]
        case (false, 1): group = scope[0]
        case (false, 2): subscription = scope[0]; group = scope[1]
        default: throw fail
        }
        var id = "/subscriptions/\(subscription)"
        if let group { id += "/resourceGroups/\(group)" }
        id += "/providers/\(segments[0])"
        for (type, name) in zip(segments.dropFirst(), names) { id += "/\(type)/\(name)" }
        return id
    }
}

extension JSONValue {
    var intValue: Int? {
        if case .number(let text) = self { return Int(text) }
        return nil
    }

    var stringValueOrNil: String? {
        if case .string(let text) = self { return text }
        return nil
    }
}
