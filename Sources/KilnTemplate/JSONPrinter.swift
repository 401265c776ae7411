/// Prints JSON with two-space indentation, members in the order given.
public enum JSONPrinter {
    public static func print(_ node: JSONNode) -> String {
        var output = ""
        write(node.value, indent: 0, into: &output)
        return output
    }

    /// One line, no spaces: how ARM's string() prints objects and arrays.
    public static func compact(_ node: JSONNode) -> String {
        var output = ""
        writeCompact(node.value, into: &output)
        return output
    }

    private static func writeCompact(_ value: JSONValue, into output: inout String) {
        switch value {
        case .object(let members):
            output += "{"
            for (offset, member) in members.enumerated() {
                if offset > 0 { output += "," }
                output += quote(member.key) + ":"
                writeCompact(member.value.value, into: &output)
            }
            output += "}"
        case .array(let items):
            output += "["
            for (offset, item) in items.enumerated() {
                if offset > 0 { output += "," }
                writeCompact(item.value, into: &output)
            }
            output += "]"
        case .string(let text): output += quote(text)
        case .number(let text): output += text
        case .bool(let flag): output += flag ? "true" : "false"
        case .null: output += "null"
        }
    }

    public static func quote(_ text: String) -> String {
        var output = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": output += "\\\""
            case "\\": output += "\\\\"
            case "\n": output += "\\n"
            case "\r": output += "\\r"
            case "\t": output += "\\t"
            case let control where control.value < 0x20:
                let hex = String(control.value, radix: 16)
                output += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: output.unicodeScalars.append(scalar)
            }
        }
        return output + "\""
    }

    private static func write(_ value: JSONValue, indent: Int, into output: inout String) {
        let pad = String(repeating: "  ", count: indent + 1)
        let closePad = String(repeating: "  ", count: indent)
        switch value {
        case .object(let members):
            if members.isEmpty { output += "{}"; return }
            output += "{\n"
            for (offset, member) in members.enumerated() {
                output += pad + quote(member.key) + ": "
                write(member.value.value, indent: indent + 1, into: &output)
                output += offset == members.count - 1 ? "\n" : ",\n"
            }
            output += closePad + "}"
        case .array(let items):
            if items.isEmpty { output += "[]"; return }
            output += "[\n"
            for (offset, item) in items.enumerated() {
                output += pad
                write(item.value, indent: indent + 1, into: &output)
                output += offset == items.count - 1 ? "\n" : ",\n"
            }
            output += closePad + "]"
        case .string(let text): output += quote(text)
        case .number(let text): output += text
        case .bool(let flag): output += flag ? "true" : "false"
        case .null: output += "null"
        }
    }
}
