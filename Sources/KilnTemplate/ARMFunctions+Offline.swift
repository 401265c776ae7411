import Foundation

/// More ARM functions: array(), base64(), base64ToString(), extensionResourceId() and the comparisons less(),
/// lessOrEquals(), greater() and greaterOrEquals() (integers by value, strings ordinally, as
/// https://learn.microsoft.com/azure/azure-resource-manager/templates/template-functions-comparison says) with their documented
/// semantics (https://learn.microsoft.com/azure/azure-resource-manager/templates/template-functions-array#array,
/// template-functions-string#base64, #base64tostring, template-functions-resource#extensionresourceid), and
/// reference() and list*() (listKeys, listSecrets, …), whose value is a live resource's state: offline it is a
/// deterministic placeholder, reported with a warning where it is used (ARMEvaluator.evaluateTree), never a guess
/// that passes silently.
extension ARMFunctions {
    static let moreNames: Set<String> = ["array", "base64", "base64tostring", "extensionresourceid", "reference", "copyindex",
                                         "less", "lessorequals", "greater", "greaterorequals"]

    /// What every placeholder starts with; property and index access on one extends it (`<…>.primaryEndpoints.blob`).
    static let placeholderPrefix = "<live value unknown offline: "

    /// reference() and the list*() functions: their values come from Azure at deployment time.
    static func isLiveLookup(_ folded: String) -> Bool {
        folded == "reference" || (folded.hasPrefix("list") && folded.count > 4)
    }

    static func isKnown(_ folded: String) -> Bool {
        names.contains(folded) || moreNames.contains(folded) || isLiveLookup(folded) || ARMEvaluator.lambdaFunctionNames.contains(folded)
    }

    static func more(_ folded: String, name: String, _ args: [JSONValue], original: String) throws(Failure) -> JSONValue? {
        func fail(_ what: String) -> Failure { Failure(message: "expected \(name)(\(what)), found \(describe(args)) in \"\(original)\"") }
        switch folded {
        case "array":
            guard args.count == 1 else { throw fail("convertToArray") }
            if case .array = args[0] { return args[0] }
            return .array([JSONNode(args[0])])
        case "base64":
            guard args.count == 1, case .string(let text) = args[0] else { throw fail("inputString") }
            return .string(Data(text.utf8).base64EncodedString())
        case "base64tostring":
            guard args.count == 1, case .string(let text) = args[0] else { throw fail("base64Value") }
            guard let data = Data(base64Encoded: text), let decoded = String(data: data, encoding: .utf8) else {
                throw fail("a base64 string of UTF-8 text")
            }
            return .string(decoded)
        case "less", "lessorequals", "greater", "greaterorequals":
            let order: ComparisonResult
            switch (args.first, args.last) {
            case (.number(let a)?, .number(let b)?) where args.count == 2 && Int(a) != nil && Int(b) != nil:
                let (x, y) = (Int(a) ?? 0, Int(b) ?? 0)
                order = x < y ? .orderedAscending : x > y ? .orderedDescending : .orderedSame
            case (.string(let a)?, .string(let b)?) where args.count == 2:
                order = a.compare(b, options: .literal)
            default:
                throw fail("two integers or two strings")
            }
            switch folded {
            case "less": return .bool(order == .orderedAscending)
            case "lessorequals": return .bool(order != .orderedDescending)
            case "greater": return .bool(order == .orderedDescending)
            default: return .bool(order != .orderedAscending)
            }
        case "extensionresourceid":
            // extensionResourceId(resourceId, resourceType, resourceName1, …): resourceId/providers/namespace/type/name…
            var texts: [String] = []
            for arg in args {
                guard case .string(let text) = arg else { throw fail("resourceId, resourceType, resourceName1, …") }
                texts.append(text)
            }
            guard texts.count >= 3 else { throw fail("resourceId, resourceType, resourceName1, …") }
            let segments = texts[1].split(separator: "/").map(String.init)
            let names = Array(texts.dropFirst(2))
            guard segments.count >= 2, names.count == segments.count - 1 else { throw fail("one resource name per type segment after the namespace") }
            var id = (texts[0].hasSuffix("/") ? String(texts[0].dropLast()) : texts[0]) + "/providers/\(segments[0])"
            for (type, name) in zip(segments.dropFirst(), names) { id += "/\(type)/\(name)" }
            return .string(id)
        default:
            guard isLiveLookup(folded) else { return nil }
            let shown = args.map { arg -> String in
                if case .string(let text) = arg { return "'\(text)'" }
                return JSONPrinter.compact(JSONNode(arg))
            }
            return .string(placeholderPrefix + "\(name)(\(shown.joined(separator: ", ")))>")
        }
    }

    /// Property or index access on a placeholder: the placeholder of the member.
    static func placeholderMember(_ container: JSONValue, _ selector: JSONValue) -> JSONValue? {
        guard case .string(let text) = container, text.hasPrefix(placeholderPrefix), text.hasSuffix(">") else { return nil }
        switch selector {
        case .string(let key): return .string(String(text.dropLast()) + ".\(key)>")
        default: return .string(String(text.dropLast()) + "[\(JSONPrinter.compact(JSONNode(selector)))]>")
        }
    }

    /// Whether an evaluated value holds a placeholder anywhere.
    static func holdsPlaceholder(_ value: JSONValue) -> Bool {
        switch value {
        case .string(let text): return text.contains(placeholderPrefix)
        case .array(let items): return items.contains { holdsPlaceholder($0.value) }
        case .object(let members): return members.contains { holdsPlaceholder($0.value.value) }
        default: return false
        }
    }
}
