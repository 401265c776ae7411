/// ARM parameter types (https://learn.microsoft.com/azure/azure-resource-manager/templates/data-types).
enum ParameterTypes {
    static func convert(_ text: String, to type: String) -> JSONNode? {
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
            guard let node = try? JSONParser.parse(text), matches(node.value, type) else { return nil }
            return node
        default:
            return JSONNode(.string(text))
        }
    }

    static func matches(_ value: JSONValue, _ type: String) -> Bool {
        switch (type, value) {
        case ("string", .string), ("securestring", .string), ("bool", .bool), ("array", .array),
             ("object", .object), ("secureobject", .object): return true
        case ("int", .number(let text)): return Int(text) != nil
        case ("string", _), ("securestring", _), ("int", _), ("bool", _), ("array", _), ("object", _), ("secureobject", _): return false
        default: return true
        }
    }

    /// The strings a secure value holds, to mask in output.
    static func strings(in value: JSONValue) -> [String] {
        switch value {
        case .string(let text): return [text]
        case .array(let items): return items.flatMap { strings(in: $0.value) }
        case .object(let members): return members.flatMap { strings(in: $0.value.value) }
        default: return []
        }
    }
}

/// languageVersion 2.0 type definitions (https://learn.microsoft.com/azure/azure-resource-manager/templates/definitions):
/// a parameter may say `"$ref": "#/definitions/NAME"` instead of `"type"`, and a definition may refer to another.
/// Kiln resolves the reference and checks what a plain parameter declaration can say too: the type, `allowedValues`,
/// `minLength`/`maxLength` (strings and arrays) and `minValue`/`maxValue` (integers). The structural constraints
/// (`properties`, `additionalProperties`, `discriminator`, `prefixItems`, `items`, `nullable`) are accepted as declared
/// and not checked against the value.
struct TypeDefinitions {
    static let maximumDepth = 32
    let definitions: [JSONMember]
    let path: TemplatePath

    /// The declaration with the referenced definition's members under its own (its own win); nil after an error.
    func resolve(_ declaration: JSONNode, at declarationPath: TemplatePath, sink: DiagnosticSink) -> JSONNode? {
        var members = declaration.members ?? []
        var seen: [String] = []
        var current = declaration
        var currentPath = declarationPath
        while let reference = current.member("$ref")?.value {
            let referencePath = currentPath.appending("$ref")
            let known = definitions.map(\.key).joined(separator: ", ")
            guard let text = reference.stringValue, text.hasPrefix("#/definitions/") else {
                sink.error(referencePath, "expected a reference \"#/definitions/NAME\" to one of the template's definitions (\(known.isEmpty ? "none declared" : known)), found \(reference.summary)", at: reference)
                return nil
            }
            let name = String(text.dropFirst("#/definitions/".count))
            guard let definition = definitions.first(where: { $0.key == name }) else {
                sink.error(referencePath, "expected a reference to one of the template's definitions (\(known.isEmpty ? "none declared" : known)), found \"\(text)\"", at: reference)
                return nil
            }
            guard !seen.contains(name), seen.count < TypeDefinitions.maximumDepth else {
                sink.error(referencePath, "expected definitions that do not refer to themselves, found \"\(text)\" in a cycle (\(seen.joined(separator: " → ")))", at: reference)
                return nil
            }
            seen.append(name)
            for member in definition.value.members ?? [] where !members.contains(where: { $0.key.caseInsensitiveEquals(member.key) }) {
                members.append(member)
            }
            current = definition.value
            currentPath = path.appending(name)
        }
        members.removeAll { $0.key == "$ref" }
        return JSONNode(.object(members), at: declaration.position)
    }
}

/// minLength/maxLength and minValue/maxValue of a parameter declaration
/// (https://learn.microsoft.com/azure/azure-resource-manager/templates/parameters).
enum ParameterConstraints {
    /// The first broken constraint, as "expected …, found …", or nil.
    static func problem(_ value: JSONValue, declaration: JSONNode, secure: Bool) -> String? {
        func bound(_ key: String) -> Int? {
            guard let member = declaration.members?.first(where: { $0.key.caseInsensitiveEquals(key) }) else { return nil }
            return member.value.value.intValue
        }
        let length: Int?
        switch value {
        case .string(let text): length = text.count
        case .array(let items): length = items.count
        default: length = nil
        }
        if let length {
            if let minimum = bound("minLength"), length < minimum {
                return "expected a length of at least \(minimum) (minLength), found \(secure ? "a shorter value" : "\(length)")"
            }
            if let maximum = bound("maxLength"), length > maximum {
                return "expected a length of at most \(maximum) (maxLength), found \(secure ? "a longer value" : "\(length)")"
            }
        }
        if case .number(let text) = value, let number = Int(text) {
            if let minimum = bound("minValue"), number < minimum { return "expected at least \(minimum) (minValue), found \(number)" }
            if let maximum = bound("maxValue"), number > maximum { return "expected at most \(maximum) (maxValue), found \(number)" }
        }
        return nil
    }
}
