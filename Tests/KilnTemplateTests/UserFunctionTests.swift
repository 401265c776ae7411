import Testing
@testable import KilnTemplate

/// An ARM template (array resources) with the given functions section, whose image template runs `command`.
private func withFunctions(_ functions: String, command: String, parameters: String = "{}", variables: String = "{}") -> String {
    armTemplate(parameters: parameters, variables: variables, command: command)
        .replacingOccurrences(of: #""contentVersion": "1.0.0.0","#, with: #""contentVersion": "1.0.0.0", "functions": \#(functions),"#)
}

private func firstCommand(_ result: TemplateLoadResult) -> String? {
    guard case .shell(let step)? = result.templates.first?.template.properties.customize.first, case .inline(let lines) = step.script else { return nil }
    return lines.first
}

private func function(_ body: String, parameters: String = #"[{"name": "prefix", "type": "string"}]"#, outputType: String = "string") -> String {
    #"[{"namespace": "contoso", "members": {"name": {"parameters": \#(parameters), "output": {"type": "\#(outputType)", "value": \#(JSONPrinter.quote(body))}}}}]"#
}

@Suite("User-defined functions")
struct UserFunctionTests {
    @Test("the documented example: contoso.uniqueName(prefix) gives toLower(prefix) + uniqueString(resourceGroup().id)")
    func documentedExample() throws {
        let functions = #"[{"namespace": "contoso", "members": {"uniqueName": {"parameters": [{"name": "namePrefix", "type": "string"}], "output": {"type": "string", "value": "[concat(toLower(parameters('namePrefix')), uniqueString(resourceGroup().id))]"}}}}]"#
        let text = withFunctions(functions, command: "[concat('echo ', contoso.uniqueName(parameters('prefix')))]",
                                 parameters: #"{"prefix": {"type": "string", "defaultValue": "Img"}}"#)
        let result = TemplateLoader.load(text: text)
        #expect(result.isValid, "\(result.errors)")
        let expected = try #require(try ARMEvaluator(parameterValues: [:], parameterProblems: [:], variableNodes: [:])
            .evaluateString("[concat('echo img', uniqueString(resourceGroup().id))]"))
        #expect(firstCommand(result).map { JSONValue.string($0) } == expected)
        // Names match without regard to case, as ARM's do.
        let folded = TemplateLoader.load(text: text.replacingOccurrences(of: "contoso.uniqueName(", with: "CONTOSO.UNIQUENAME("))
        #expect(firstCommand(folded) == firstCommand(result))
    }

    @Test("ARM's limitations are errors at the function's path")
    func limitations() {
        let cases: [(String, String, String)] = [
            (function("[variables('v')]"), "functions[0].members.name.output.value", "variables"),
            (function("[parameters('templateParameter')]"), "functions[0].members.name.output.value", "own parameters"),
            (function("[contoso.other(parameters('prefix'))]"), "functions[0].members.name.output.value", "other user-defined functions"),
            (function("[reference('x').id]"), "functions[0].members.name.output.value", "reference()"),
            (function("[parameters('prefix')]", parameters: #"[{"name": "prefix", "type": "string", "defaultValue": "a"}]"#),
             "functions[0].members.name.parameters[0].defaultValue", "default value"),
        ]
        for (functions, path, words) in cases {
            let result = TemplateLoader.load(text: withFunctions(functions, command: "[contoso.name('x')]", variables: #"{"v": "1"}"#))
            #expect(result.errors.map(\.path.description) == [path], "\(functions): \(result.errors)")
            #expect(result.errors.first?.message.contains(words) == true, "\(result.errors)")
        }
    }

    @Test("calls are checked: an unknown function, the argument count and types, the output type")
    func callChecks() {
        let unknown = TemplateLoader.load(text: withFunctions(function("[parameters('prefix')]"), command: "[contoso.nope('x')]"))
        #expect(unknown.errors.map(\.path.description) == ["resources[0].properties.customize[0].inline[0]"])
        #expect(unknown.errors.first?.message.contains("contoso.name") == true)
        let count = TemplateLoader.load(text: withFunctions(function("[parameters('prefix')]"), command: "[contoso.name('x', 'y')]"))
        #expect(count.errors.first?.message.contains("functions[0].members.name") == true, "\(count.errors)")
        let type = TemplateLoader.load(text: withFunctions(function("[parameters('prefix')]"), command: "[contoso.name(1)]"))
        #expect(type.errors.first?.message.contains("'prefix'") == true, "\(type.errors)")
        let output = TemplateLoader.load(text: withFunctions(function("[length(parameters('prefix'))]", outputType: "string"), command: "[contoso.name('x')]"))
        #expect(output.errors.first?.message.contains("output type string") == true, "\(output.errors)")
    }

    @Test("functions in a nested deployment with inner scope are its own")
    func nestedInnerScope() {
        let inner = withFunctions(function("[concat('echo ', parameters('prefix'))]"), command: "[contoso.name('nested')]")
        let text = #"""
        {"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#", "contentVersion": "1.0.0.0",
         "resources": [{"type": "Microsoft.Resources/deployments", "apiVersion": "2022-09-01", "name": "n",
           "properties": {"mode": "Incremental", "expressionEvaluationOptions": {"scope": "inner"}, "template": \#(inner)}}]}
        """#
        let result = TemplateLoader.load(text: text)
        #expect(result.isValid, "\(result.errors)")
        #expect(firstCommand(result) == "echo nested")
    }

    @Test("languageVersion 2.0 (what Bicep generates): functions may call each other; endless recursion is a clear error")
    func callsBetweenFunctionsIn2_0() {
        let functions = #"[{"namespace": "lib", "members": {"greet": {"parameters": [{"name": "who", "type": "string"}], "output": {"type": "string", "value": "[concat('echo hello ', lib.upper(parameters('who')))]"}}, "upper": {"parameters": [{"name": "text", "type": "string"}], "output": {"type": "string", "value": "[toUpper(parameters('text'))]"}}, "loop": {"parameters": [{"name": "n", "type": "int"}], "output": {"type": "int", "value": "[lib.loop(parameters('n'))]"}}}}]"#
        let version2 = withFunctions(functions, command: "[lib.greet('kiln')]")
            .replacingOccurrences(of: #""contentVersion": "1.0.0.0","#, with: #""contentVersion": "1.0.0.0", "languageVersion": "2.0","#)
        let result = TemplateLoader.load(text: version2)
        #expect(result.isValid, "\(result.errors)")
        #expect(firstCommand(result) == "echo hello KILN")
        // Bicep's namespace for its functions.
        let bicep = TemplateLoader.load(text: version2.replacingOccurrences(of: "lib.", with: "__bicep.").replacingOccurrences(of: #""namespace": "lib""#, with: #""namespace": "__bicep""#))
        #expect(firstCommand(bicep) == "echo hello KILN", "\(bicep.errors)")
        let endless = TemplateLoader.load(text: version2.replacingOccurrences(of: "[lib.greet('kiln')]", with: "[string(lib.loop(1))]"))
        #expect(endless.errors.first?.message.contains("nested at most") == true, "\(endless.errors)")
        // The same functions in a languageVersion 1.0 template: ARM's rule, at the calling function's path.
        let version1 = TemplateLoader.load(text: withFunctions(functions, command: "[lib.upper('x')]"))
        #expect(Set(version1.errors.map(\.path.description)) == ["functions[0].members.greet.output.value", "functions[0].members.loop.output.value"], "\(version1.errors)")
    }
}
