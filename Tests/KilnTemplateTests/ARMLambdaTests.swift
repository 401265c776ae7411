import Testing
@testable import KilnTemplate

private func evaluate(_ text: String, parameters: [String: JSONNode] = [:]) throws -> JSONValue? {
    try ARMEvaluator(parameterValues: parameters, parameterProblems: [:], variableNodes: [:]).evaluateString(text)
}

private func strings(_ values: [String]) -> JSONValue { .array(values.map { JSONNode(.string($0)) }) }

private func firstCommand(_ result: TemplateLoadResult) -> String? {
    guard case .shell(let step)? = result.templates.first?.template.properties.customize.first, case .inline(let lines) = step.script else { return nil }
    return lines.first
}

@Suite("Lambda functions, tryGet, property and variable loops, nullable parameters")
struct ARMLambdaTests {
    @Test("map, filter, reduce, sort and toObject with their documented results")
    func lambdas() throws {
        #expect(try evaluate("[map(createArray('a', 'b'), lambda('x', toUpper(lambdaVariables('x'))))]") == strings(["A", "B"]))
        #expect(try evaluate("[map(createArray('a', 'b'), lambda('x', 'i', concat(lambdaVariables('x'), string(lambdaVariables('i')))))]") == strings(["a0", "b1"]))
        #expect(try evaluate("[filter(createArray('keep', 'drop', 'keeper'), lambda('x', startsWith(lambdaVariables('x'), 'keep')))]") == strings(["keep", "keeper"]))
        #expect(try evaluate("[reduce(createArray('a', 'b', 'c'), '', lambda('cur', 'next', concat(lambdaVariables('cur'), lambdaVariables('next'))))]") == .string("abc"))
        #expect(try evaluate("[sort(createArray('b', 'c', 'a'), lambda('x', 'y', less(lambdaVariables('x'), lambdaVariables('y'))))]") == strings(["a", "b", "c"]))
        #expect(try evaluate("[sort(createArray(3, 1, 2), lambda('x', 'y', greater(lambdaVariables('x'), lambdaVariables('y'))))]")
                == .array([3, 2, 1].map { JSONNode(.number(String($0))) }))
        #expect(try evaluate("[lessOrEquals(2, 2)]") == .bool(true))
        // Stable: equal keys keep their order.
        let pairs = "createArray(createArray(2, 'a'), createArray(1, 'b'), createArray(2, 'c'), createArray(1, 'd'), createArray(0, 'e'))"
        #expect(try evaluate("[map(sort(\(pairs), lambda('x', 'y', less(lambdaVariables('x')[0], lambdaVariables('y')[0]))), lambda('p', lambdaVariables('p')[1]))]")
                == strings(["e", "b", "d", "a", "c"]))
        #expect(try evaluate("[toObject(createArray('a', 'b'), lambda('x', lambdaVariables('x')), lambda('x', toUpper(lambdaVariables('x'))))]")
                == .object([JSONMember(key: "a", value: JSONNode(.string("A"))), JSONMember(key: "b", value: JSONNode(.string("B")))]))
        // The pattern Bicep writes for user-assigned identities: an array of IDs folded into an object of empty objects.
        let identities = try evaluate("[reduce(map(createArray('/id/one', '/id/two'), lambda('id', createObject(format('{0}', lambdaVariables('id')), createObject()))), createObject(), lambda('cur', 'next', union(lambdaVariables('cur'), lambdaVariables('next'))))]")
        #expect(identities == .object([JSONMember(key: "/id/one", value: JSONNode(.object([]))), JSONMember(key: "/id/two", value: JSONNode(.object([])))]))
    }

    @Test("lambda misuse is an error naming the expression")
    func lambdaErrors() {
        #expect(throws: ARMEvaluator.Failure.self) { try evaluate("[lambda('x', lambdaVariables('x'))]") }
        #expect(throws: ARMEvaluator.Failure.self) { try evaluate("[lambdaVariables('x')]") }
        #expect(throws: ARMEvaluator.Failure.self) { try evaluate("[map(createArray(1), lambda('x', lambdaVariables('y')))]") }
        #expect(throws: ARMEvaluator.Failure.self) { try evaluate("[filter(createArray(1), lambda('x', 'not a bool'))]") }
        #expect(throws: ARMEvaluator.Failure.self) { try evaluate("[map('text', lambda('x', lambdaVariables('x')))]") }
    }

    @Test("tryGet: the value, or null for a missing key, an index out of range or a null object")
    func tryGet() throws {
        let object = JSONNode(.object([JSONMember(key: "Name", value: JSONNode(.string("n"))), JSONMember(key: "list", value: JSONNode(strings(["a"])))]))
        #expect(try evaluate("[tryGet(parameters('o'), 'name')]", parameters: ["o": object]) == .string("n"))
        #expect(try evaluate("[tryGet(parameters('o'), 'list', 0)]", parameters: ["o": object]) == .string("a"))
        #expect(try evaluate("[tryGet(parameters('o'), 'list', 5)]", parameters: ["o": object]) == .null)
        #expect(try evaluate("[tryGet(parameters('o'), 'missing', 'deeper')]", parameters: ["o": object]) == .null)
        #expect(try evaluate("[tryGet(null(), 'kind')]") == .null)
    }

    @Test("a property copy loop creates the property as an array, copyIndex('name') giving each index")
    func propertyLoop() throws {
        let text = armTemplate(parameters: #"{"outputs": {"type": "array", "defaultValue": ["one", "two"]}}"#)
            .replacingOccurrences(of: #""distribute": [{"type": "VHD", "runOutputName": "vhd"}]"#,
                                  with: #""copy": [{"name": "distribute", "count": "[length(parameters('outputs'))]", "input": {"type": "VHD", "runOutputName": "[parameters('outputs')[copyIndex('distribute')]]"}}]"#)
        let result = TemplateLoader.load(text: text)
        #expect(result.isValid, "\(result.errors)")
        #expect(result.warnings.isEmpty, "\(result.warnings)")
        let names = result.templates.first?.template.properties.distribute.map(\.runOutputName)
        #expect(names == ["one", "two"])
        let tooMany = TemplateLoader.load(text: text.replacingOccurrences(of: "[length(parameters('outputs'))]", with: "801"))
        #expect(tooMany.errors.map(\.path.description).contains("resources[0].properties.copy[0].count"), "\(tooMany.errors)")
    }

    @Test("a nullable parameter without a value is null; a null value of a nullable parameter passes allowedValues")
    func nullableParameters() throws {
        let text = armTemplate(parameters: #"{"tags": {"type": "object", "nullable": true}, "boot": {"type": "string", "nullable": true, "allowedValues": ["Enabled", "Disabled"]}}"#,
                               command: "[if(equals(parameters('boot'), null()), 'echo no boot setting', 'echo boot')]")
            .replacingOccurrences(of: #""location": "westus2","#, with: #""location": "westus2", "tags": "[parameters('tags')]","#)
        let result = TemplateLoader.load(text: text)
        #expect(result.isValid, "\(result.errors)")
        #expect(result.templates.first?.template.tags.isEmpty == true)
        let notNullable = TemplateLoader.load(text: text.replacingOccurrences(of: #""tags": {"type": "object", "nullable": true}"#, with: #""tags": {"type": "object"}"#))
        #expect(notNullable.errors.map(\.path.description) == ["resources[0].tags"], "\(notNullable.errors)")
    }

    @Test("variable loops: a copy at the top of variables defines a variable; one inside a variable's object creates a property")
    func variableLoops() {
        let text = armTemplate(variables: #"{"copy": [{"name": "steps", "count": 2, "input": "[concat('echo ', string(copyIndex('steps')))]"}], "settings": {"copy": [{"name": "disks", "count": 3, "input": {"lun": "[copyIndex('disks')]"}}]}}"#,
                               command: "[concat(variables('steps')[1], ' ', string(length(variables('settings').disks)), ' ', string(variables('settings').disks[2].lun))]")
        let result = TemplateLoader.load(text: text)
        #expect(result.isValid, "\(result.errors)")
        #expect(firstCommand(result) == "echo 1 3 2")
        let unnamed = TemplateLoader.load(text: armTemplate(variables: #"{"copy": [{"count": 1, "input": 1}]}"#))
        #expect(unnamed.errors.map(\.path.description) == ["variables.copy[0]"], "\(unnamed.errors)")
    }
}
