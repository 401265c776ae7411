/// A JSON document that remembers where each value came from, keeps object members in file order
/// (duplicates included) and can be printed back. Foundation's parser keeps neither positions nor order,
/// and template diagnostics need both.
public struct SourcePosition: Sendable, Equatable, CustomStringConvertible {
    public var line: Int
    public var column: Int
    public init(line: Int, column: Int) {
        self.line = line
        self.column = column
    }
    public var description: String { "line \(line), column \(column)" }
}

public struct JSONMember: Sendable, Equatable {
    public var key: String
    public var value: JSONNode
    public init(key: String, value: JSONNode) {
        self.key = key
        self.value = value
    }
}

public indirect enum JSONValue: Sendable, Equatable {
    case object([JSONMember])
    case array([JSONNode])
    case string(String)
    /// The number as written, so integers of any size and exact decimals survive a round trip.
    case number(String)
    case bool(Bool)
    case null
}

public struct JSONNode: Sendable, Equatable {
    public var value: JSONValue
    public var position: SourcePosition

    public init(_ value: JSONValue, at position: SourcePosition = SourcePosition(line: 0, column: 0)) {
        self.value = value
        self.position = position
    }

    /// Members of an object, or nil.
    public var members: [JSONMember]? {
        if case .object(let members) = value { return members }
        return nil
    }

    /// The first member whose key matches `key` ignoring case (AIB accepted property names in any case before 2024).
    public func member(_ key: String) -> JSONMember? {
        members?.first { $0.key.caseInsensitiveEquals(key) }
    }

    public var stringValue: String? {
        if case .string(let text) = value { return text }
        return nil
    }

    /// Short description of the value for "found …" in diagnostics.
    public var summary: String {
        switch value {
        case .object: return "an object"
        case .array(let items): return "an array of \(items.count)"
        case .string(let text):
            let shown = text.count > 80 ? String(text.prefix(77)) + "..." : text
            return "\"\(shown)\""
        case .number(let text): return text
        case .bool(let flag): return flag ? "true" : "false"
        case .null: return "null"
        }
    }
}

extension String {
    public func caseInsensitiveEquals(_ other: String) -> Bool {
        lowercased() == other.lowercased()
    }
}

public struct JSONSyntaxError: Error, Sendable, Equatable, CustomStringConvertible {
    public var position: SourcePosition
    public var message: String
    public var description: String { "malformed JSON at \(position): \(message)" }
}
