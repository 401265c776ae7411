/// The syntax of one ARM expression (https://learn.microsoft.com/azure/azure-resource-manager/templates/template-expressions):
/// literals, calls (`namespace.member(...)` for user-defined functions), property and index access. ARMEvaluator
/// evaluates what this parses.
indirect enum Expression {
    case string(String)
    case integer(String)
    case call(String, [Expression])
    case property(Expression, String)
    case index(Expression, Expression)
}

/// Parses one ARM expression body (the text between the outer brackets).
struct ExpressionParser {
    private let characters: [Character]
    private let original: String
    private var index = 0
    private var depth = 0

    init(text: String, original: String) {
        characters = Array(text)
        self.original = original
    }

    mutating func parseAll() throws(ARMEvaluator.Failure) -> Expression {
        let expression = try parseExpression()
        skipSpaces()
        if index < characters.count { throw fail("unexpected \"\(String(characters[index...]))\"") }
        return expression
    }

    private func fail(_ message: String) -> ARMEvaluator.Failure {
        ARMEvaluator.Failure(message: "expected an ARM expression, found \"\(original)\": \(message)")
    }

    private mutating func skipSpaces() {
        while index < characters.count, characters[index].isWhitespace { index += 1 }
    }

    private mutating func parseExpression() throws(ARMEvaluator.Failure) -> Expression {
        guard depth < ARMEvaluator.maximumDepth else {
            throw fail("expected calls nested at most \(ARMEvaluator.maximumDepth) deep, found deeper nesting")
        }
        depth += 1
        defer { depth -= 1 }
        var expression = try parsePrimary()
        while true {
            skipSpaces()
            guard index < characters.count else { return expression }
            if characters[index] == "." {
                index += 1
                skipSpaces()
                let name = identifier()
                guard !name.isEmpty else { throw fail("expected a property name after \".\"") }
                expression = .property(expression, name)
            } else if characters[index] == "[" {
                index += 1
                let selector = try parseExpression()
                skipSpaces()
                guard index < characters.count, characters[index] == "]" else { throw fail("expected \"]\"") }
                index += 1
                expression = .index(expression, selector)
            } else {
                return expression
            }
        }
    }

    private mutating func identifier() -> String {
        var name = ""
        while index < characters.count, characters[index].isLetter || characters[index].isNumber || characters[index] == "_" || characters[index] == "$" {
            name.append(characters[index])
            index += 1
        }
        return name
    }

    private mutating func parsePrimary() throws(ARMEvaluator.Failure) -> Expression {
        skipSpaces()
        guard index < characters.count else { throw fail("expected a value") }
        let character = characters[index]
        if character == "'" {
            index += 1
            var text = ""
            while true {
                guard index < characters.count else { throw fail("unterminated string literal") }
                if characters[index] == "'" {
                    if index + 1 < characters.count, characters[index + 1] == "'" {
                        text.append("'")
                        index += 2
                        continue
                    }
                    index += 1
                    return .string(text)
                }
                text.append(characters[index])
                index += 1
            }
        }
        if character.isNumber || character == "-" {
            var text = String(character)
            index += 1
            while index < characters.count, characters[index].isNumber { text.append(characters[index]); index += 1 }
            guard Int(text) != nil else { throw fail("expected an integer, found \"\(text)\"") }
            return .integer(text)
        }
        // Bicep names its user-defined functions' namespace "__bicep".
        guard character.isLetter || character == "_" else { throw fail("unexpected \"\(character)\"") }
        var name = identifier()
        // A user-defined function is called as namespace.member(...); a built-in name is never followed by ".".
        if index < characters.count, characters[index] == "." {
            index += 1
            let member = identifier()
            guard !member.isEmpty else { throw fail("expected a function name after \"\(name).\"") }
            name += "." + member
        }
        skipSpaces()
        // true, false and null also stand alone, as the functions true(), false() and null().
        if ["true", "false", "null"].contains(name.lowercased()), index >= characters.count || characters[index] != "(" {
            return .call(name, [])
        }
        guard index < characters.count, characters[index] == "(" else { throw fail("expected \"(\" after \(name)") }
        index += 1
        var arguments: [Expression] = []
        skipSpaces()
        if index < characters.count, characters[index] == ")" {
            index += 1
            return try checkedCall(name, arguments)
        }
        while true {
            arguments.append(try parseExpression())
            skipSpaces()
            guard index < characters.count else { throw fail("expected \")\"") }
            if characters[index] == "," { index += 1; continue }
            if characters[index] == ")" { index += 1; return try checkedCall(name, arguments) }
            throw fail("unexpected \"\(characters[index])\"")
        }
    }

    private func checkedCall(_ name: String, _ arguments: [Expression]) throws(ARMEvaluator.Failure) -> Expression {
        // namespace.member: a user-defined function, looked up when it is called.
        if name.contains(".") { return .call(name, arguments) }
        guard ARMFunctions.isKnown(name.lowercased()) else {
            throw ARMEvaluator.Failure(message: ARMFunctions.unsupported(name, original))
        }
        return .call(name, arguments)
    }
}
