import Testing
@testable import KilnTemplate

private func evaluate(_ text: String) throws -> JSONValue? {
    try ARMEvaluator(parameterValues: [:], parameterProblems: [:], variableNodes: [:]).evaluateString(text)
}

private func inlineCommand(_ result: TemplateLoadResult) -> String? {
    guard case .shell(let step)? = result.templates.first?.template.properties.customize.first, case .inline(let lines) = step.script else { return nil }
    return lines.first
}

@Suite("ARM functions found in public templates (issue 14)")
struct ARMOfflineFunctionTests {
    @Test("array(), base64(), base64ToString() and extensionResourceId() as documented", arguments: [
        ("[string(array('a'))]", #"["a"]"#), ("[string(array(createArray(1, 2)))]", "[1,2]"),
        ("[string(array(createObject('k', 'v')))]", #"[{"k":"v"}]"#),
        ("[base64('one, two, three')]", "b25lLCB0d28sIHRocmVl"), ("[base64ToString('b25lLCB0d28sIHRocmVl')]", "one, two, three"),
        ("[extensionResourceId('/subscriptions/s/resourceGroups/rg', 'Microsoft.Storage/storageAccounts', 'sa')]",
         "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/sa"),
        ("[extensionResourceId('/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g', 'Microsoft.Authorization/locks', 'lock')]",
         "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/providers/Microsoft.Authorization/locks/lock"),
    ])
    func documented(_ expression: String, _ expected: String) throws {
        #expect(try evaluate(expression) == .string(expected))
    }

    @Test("base64ToString() of something that is not base64 is an error naming the expression")
    func badBase64() {
        #expect(throws: ARMEvaluator.Failure.self) { try evaluate("[base64ToString('%%%')]") }
    }

    @Test("reference() and list*() give a deterministic placeholder, with a warning naming the expression and its path")
    func liveLookups() throws {
        let expression = "[format('curl {0}/x', reference(resourceId('Microsoft.Storage/storageAccounts', 'sa'), '2019-06-01').primaryEndpoints.blob)]"
        let result = TemplateLoader.load(text: armTemplate(command: expression))
        #expect(result.isValid, "\(result.errors)")
        #expect(result.warnings.map(\.path.description) == ["resources[0].properties.customize[0].inline[0]"])
        let message = try #require(result.warnings.first?.message)
        #expect(message.contains(expression) && message.contains("offline"))
        let command = try #require(inlineCommand(result))
        #expect(command.hasPrefix("curl " + ARMFunctions.placeholderPrefix + "reference('/subscriptions/"))
        #expect(command.hasSuffix(").primaryEndpoints.blob>/x"))
        #expect(inlineCommand(TemplateLoader.load(text: armTemplate(command: expression))) == command)

        let keys = TemplateLoader.load(text: armTemplate(command: "[listKeys('sa', '2019-06-01').keys[0].value]"))
        #expect(keys.isValid, "\(keys.errors)")
        #expect(inlineCommand(keys) == ARMFunctions.placeholderPrefix + "listKeys('sa', '2019-06-01').keys[0].value>")
    }
}
