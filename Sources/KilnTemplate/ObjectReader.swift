/// Reads one JSON object of a template: looks properties up without regard to case (as AIB did before 2024),
/// checks their JSON types, reports problems at their canonical paths and remembers which members were read,
/// so that the rest can be reported as unknown.
final class ObjectReader {
    let node: JSONNode
    let path: TemplatePath
    let sink: DiagnosticSink
    private let members: [JSONMember]
    private var readKeys: Set<String> = []

    /// nil (after reporting) when `node` is not an object.
    init?(_ node: JSONNode, at path: TemplatePath, sink: DiagnosticSink, expected: String = "an object") {
        guard let members = node.members else {
            sink.error(path, "expected \(expected), found \(node.summary)", at: node)
            return nil
        }
        self.node = node
        self.path = path
        self.sink = sink
        self.members = members
        var seen: [String: String] = [:]
        for member in members {
            let folded = member.key.lowercased()
            if let first = seen[folded] {
                sink.error(path.appending(member.key),
                           "expected each property once, found \"\(member.key)\" again (first as \"\(first)\")",
                           at: member.value)
            } else {
                seen[folded] = member.key
            }
        }
    }

    func path(_ key: String) -> TemplatePath { path.appending(key) }

    /// The member's value, or nil when absent or null (ARM treats null as absent).
    func value(_ key: String) -> JSONNode? {
        readKeys.insert(key.lowercased())
        guard let member = members.first(where: { $0.key.caseInsensitiveEquals(key) }) else { return nil }
        sink.caseMismatch(path(key), written: member.key, canonical: key, what: "property names")
        if case .null = member.value.value { return nil }
        return member.value
    }

    func has(_ key: String) -> Bool { value(key) != nil }

    func missing(_ key: String, _ expected: String) {
        sink.error(path(key), "expected \(expected), found nothing")
    }

    func string(_ key: String, required: Bool = false, allowEmpty: Bool = false, expected: String = "a string") -> String? {
        guard let node = value(key) else {
            if required { missing(key, expected) }
            return nil
        }
        guard case .string(let text) = node.value else {
            sink.error(path(key), "expected \(expected), found \(node.summary)", at: node)
            return nil
        }
        if !allowEmpty && text.trimmingSpaces.isEmpty {
            sink.error(path(key), "expected \(expected), found an empty string", at: node)
            return nil
        }
        return text
    }

    func int(_ key: String, required: Bool = false, expected: String = "an integer") -> Int? {
        guard let node = value(key) else {
            if required { missing(key, expected) }
            return nil
        }
        return ObjectReader.integer(node, at: path(key), sink: sink, expected: expected)
    }

    /// An integer, or a string holding one: the service deserializes with JSON.NET, which converts such strings
    /// by default (System.Text.Json's "quoted numbers" issue, dotnet/runtime#30255 (was dotnet/corefx#39473), names
    /// it as what Newtonsoft does out of the box), so `"validExitCodes": ["0", "3010"]` is accepted, with a notice.
    static func integer(_ node: JSONNode, at path: TemplatePath, sink: DiagnosticSink, expected: String) -> Int? {
        switch node.value {
        case .number(let text):
            if let value = Int(text) { return value }
        case .string(let text):
            if let value = Int(text.trimmingSpaces) {
                sink.warning(path, "the string \"\(text)\" where the schema has an integer; converted to \(value), as the service's JSON.NET deserializer does", at: node)
                return value
            }
        default: break
        }
        sink.error(path, "expected \(expected), found \(node.summary)", at: node)
        return nil
    }

    /// true or false, or the strings "true"/"false" in any case (converted as JSON.NET converts them, with a notice).
    func bool(_ key: String) -> Bool? {
        guard let node = value(key) else { return nil }
        switch node.value {
        case .bool(let flag): return flag
        case .string(let text) where ["true", "false"].contains(text.trimmingSpaces.lowercased()):
            let flag = text.trimmingSpaces.lowercased() == "true"
            sink.warning(path(key), "the string \"\(text)\" where the schema has a boolean; converted to \(flag), as the service's JSON.NET deserializer does", at: node)
            return flag
        default:
            sink.error(path(key), "expected true or false, found \(node.summary)", at: node)
            return nil
        }
    }

    func object(_ key: String, required: Bool = false, expected: String = "an object") -> ObjectReader? {
        guard let node = value(key) else {
            if required { missing(key, expected) }
            return nil
        }
        return ObjectReader(node, at: path(key), sink: sink, expected: expected)
    }

    func array(_ key: String, required: Bool = false, expected: String = "an array") -> [JSONNode]? {
        guard let node = value(key) else {
            if required { missing(key, expected) }
            return nil
        }
        guard case .array(let items) = node.value else {
            sink.error(path(key), "expected \(expected), found \(node.summary)", at: node)
            return nil
        }
        return items
    }

    func stringArray(_ key: String, expected: String = "an array of strings") -> [String]? {
        guard let items = array(key, expected: expected) else { return nil }
        var strings: [String] = []
        for (index, item) in items.enumerated() {
            guard case .string(let text) = item.value else {
                sink.error(path(key).appending(index: index), "expected a string, found \(item.summary)", at: item)
                continue
            }
            strings.append(text)
        }
        return strings
    }

    /// An object whose values are strings (tags): kept in file order.
    func stringMap(_ key: String) -> [KeyValue] {
        guard let map = object(key, expected: "an object of string values") else { return [] }
        var pairs: [KeyValue] = []
        for member in map.members {
            map.readKeys.insert(member.key.lowercased())
            if case .null = member.value.value {
                // Bicep modules write `if(cond, value, null())` per tag; the tag is then left out, as ARM leaves out null.
                sink.warning(map.path(member.key), "null value: the tag is left out", at: member.value)
                continue
            }
            guard case .string(let text) = member.value.value else {
                sink.error(map.path(member.key), "expected a string value, found \(member.value.summary)", at: member.value)
                continue
            }
            pairs.append(KeyValue(member.key, text))
        }
        return pairs
    }

    /// The keys of an object (userAssignedIdentities maps identity IDs to {}).
    func keys(_ key: String) -> [String]? {
        guard let map = object(key) else { return nil }
        return map.members.map(\.key)
    }

    /// One of `allowed`, compared without regard to case; returns the canonical spelling.
    func choice(_ key: String, _ allowed: [String], required: Bool = false) -> String? {
        let expected = "one of " + allowed.map { "\"\($0)\"" }.joined(separator: ", ")
        guard let text = string(key, required: required, expected: expected) else { return nil }
        guard let match = allowed.first(where: { $0.caseInsensitiveEquals(text) }) else {
            sink.error(path(key), "expected \(expected), found \"\(text)\"", at: value(key))
            return nil
        }
        sink.caseMismatch(path(key), written: text, canonical: match, what: "values")
        return match
    }

    /// Warns about members nobody read: AIB since 2024-05-21 rejects unknown properties, and a typo here
    /// would silently do nothing.
    func reportUnknown() {
        for member in members where !readKeys.contains(member.key.lowercased()) {
            sink.warning(path.appending(member.key), "unknown property \"\(member.key)\"; Kiln ignores it", at: member.value)
        }
    }
}

extension String {
    var trimmingSpaces: Substring {
        var text = self[...]
        while let first = text.first, first.isWhitespace { text = text.dropFirst() }
        while let last = text.last, last.isWhitespace { text = text.dropLast() }
        return text
    }
}
