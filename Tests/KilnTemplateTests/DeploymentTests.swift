import Foundation
import Testing
@testable import KilnTemplate

/// An outer template whose only resource is a nested deployment holding `inner` (an image template resource, or any
/// resources array text) with the given scope and parameters.
private func nested(scope: String?, outerParameters: String = "{}", outerVariables: String = "{}", passed: String = "{}",
                    innerParameters: String = "{}", innerVariables: String = "{}", innerResources: String) -> String {
    let options = scope.map { #""expressionEvaluationOptions": {"scope": "\#($0)"},"# } ?? ""
    return """
    {
      "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
      "contentVersion": "1.0.0.0",
      "parameters": \(outerParameters),
      "variables": \(outerVariables),
      "resources": [{
        "type": "Microsoft.Resources/deployments", "apiVersion": "2022-09-01", "name": "images",
        "properties": {
          "mode": "Incremental", \(options)
          "parameters": \(passed),
          "template": {
            "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
            "contentVersion": "1.0.0.0",
            "parameters": \(innerParameters),
            "variables": \(innerVariables),
            "resources": \(innerResources)
          }
        }
      }]
    }
    """
}

private func imageResource(location: String = "westus2", command: String = "echo hi", name: String = "step") -> String {
    """
    [{"type": "Microsoft.Resources/deployments", "apiVersion": "2022-09-01", "name": "unrelated", "properties": {"mode": "Incremental", "template": {"resources": []}}},
     {"type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-07-01", "name": "img", "location": \(JSONPrinter.quote(location)),\(testIdentity)
      "properties": {
        "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12", "version": "latest"},
        "customize": [{"type": "Shell", "name": \(JSONPrinter.quote(name)), "inline": [\(JSONPrinter.quote(command))]}],
        "distribute": [{"type": "VHD", "runOutputName": "vhd"}]}}]
    """
}

private func command(_ result: TemplateLoadResult) -> String? {
    guard case .shell(let step)? = result.templates.first?.template.properties.customize.first, case .inline(let lines) = step.script else { return nil }
    return lines.first
}

@Suite("Nested deployments and parameter files")
struct DeploymentTests {
    @Test("inner scope: the nested template's parameters, given from the parent's properties.parameters")
    func innerScope() throws {
        let text = nested(scope: "inner",
                          outerParameters: #"{"who": {"type": "string", "defaultValue": "outer"}}"#,
                          passed: #"{"greeting": {"value": "[concat('hello ', parameters('who'))]"}}"#,
                          innerParameters: #"{"greeting": {"type": "string"}}"#,
                          innerVariables: #"{"suffix": "!"}"#,
                          innerResources: imageResource(command: "[concat('echo ', parameters('greeting'), variables('suffix'))]"))
        let result = TemplateLoader.load(text: text)
        #expect(result.isValid, "\(result.errors)")
        #expect(command(result) == "echo hello outer!")
        #expect(result.templates.first?.basePath.description == "resources[0].properties.template.resources[1]")
        #expect(result.templates.first?.stepPaths.customize.first?.description == "resources[0].properties.template.resources[1].properties.customize[0]")
    }

    @Test("outer scope (the default): the parent's parameters and variables; the nested ones are ignored with a warning")
    func outerScope() throws {
        let text = nested(scope: nil,
                          outerVariables: #"{"word": "from parent"}"#,
                          innerVariables: #"{"word": "from nested"}"#,
                          innerResources: imageResource(command: "[concat('echo ', variables('word'))]"))
        let result = TemplateLoader.load(text: text)
        #expect(result.isValid, "\(result.errors)")
        #expect(command(result) == "echo from parent")
        #expect(result.warnings.map(\.path.description).contains("resources[0].properties.template.variables"))
    }

    @Test("problems inside a nested template carry the full path")
    func nestedPaths() throws {
        let text = nested(scope: "inner", innerResources: imageResource(name: "a").replacingOccurrences(of: #""distribute": [{"type": "VHD", "runOutputName": "vhd"}]"#, with: #""distribute": []"#))
        let result = TemplateLoader.load(text: text)
        #expect(result.errors.map(\.path.description) == ["resources[0].properties.template.resources[1].properties.distribute"])
        let missing = TemplateLoader.load(text: nested(scope: "inner", innerParameters: #"{"x": {"type": "string"}}"#,
                                                       innerResources: imageResource(command: "[parameters('x')]")))
        #expect(missing.errors.map(\.path.description) == ["resources[0].properties.template.resources[1].properties.customize[0].inline[0]"])
        let unknown = TemplateLoader.load(text: nested(scope: "inner", passed: #"{"nope": {"value": 1}}"#, innerResources: imageResource()))
        #expect(unknown.errors.map(\.path.description) == ["resources[0].properties.parameters"])
    }

    @Test("parameter files: typed values, checked against the declared type; unknown names are errors")
    func parameterFiles() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-params-\(UUID().uuidString).json").path
        defer { try? FileManager.default.removeItem(atPath: file) }
        try #"""
        {
          "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#",
          "contentVersion": "1.0.0.0",
          // az accepts comments here too
          "parameters": {"word": {"value": "from file"}, "count": {"value": 3}}
        }
        """#.write(toFile: file, atomically: true, encoding: .utf8)
        let values = try DeploymentInputs.readParameterFile(file)
        #expect(values["count"]?.value == .number("3"))
        let template = armTemplate(parameters: #"{"word": {"type": "string"}, "count": {"type": "int", "defaultValue": 1}}"#,
                                   command: "[format('echo {0} {1}', parameters('word'), parameters('count'))]")
        let result = TemplateLoader.load(text: template, inputs: DeploymentInputs(fileParameters: values))
        #expect(result.isValid, "\(result.errors)")
        let overridden = TemplateLoader.load(text: template, inputs: DeploymentInputs(parameters: ["word": "from flag"], fileParameters: values))
        #expect(overridden.templates.first?.template.properties.customize.first.map { "\($0)" }?.contains("echo from flag 3") == true)

        let wrongType = TemplateLoader.load(text: template, inputs: DeploymentInputs(fileParameters: ["word": JSONNode(.number("1")), "count": JSONNode(.string("3"))]))
        #expect(Set(wrongType.errors.map(\.path.description)) == ["parameters.word", "parameters.count"])
        let unknown = TemplateLoader.load(text: template, inputs: DeploymentInputs(fileParameters: ["word": JSONNode(.string("x")), "other": JSONNode(.string("y"))]))
        #expect(unknown.errors.map(\.path.description) == ["parameters"])
        #expect(unknown.errors.first?.message.contains("\"other\"") == true)

        #expect(throws: ParameterFileError.self) { try DeploymentInputs.readParameterFile("/nonexistent/params.json") }
    }

    @Test("secure parameters: from the environment or a file, masked in every message and in printed output")
    func secureParameters() throws {
        let template = armTemplate(parameters: #"{"token": {"type": "securestring"}, "level": {"type": "int", "allowedValues": [1, 2]}}"#,
                                   command: "[concat('login --token ', parameters('token'))]")
        let secret = "s3cr3t-value"
        let fromEnvironment = TemplateLoader.load(text: template, inputs: DeploymentInputs(
            parameters: ["level": "2"], environment: ["KILN_PARAMETER_token": secret]))
        #expect(fromEnvironment.isValid, "\(fromEnvironment.errors)")
        let printed = fromEnvironment.masked(JSONPrinter.print(try #require(fromEnvironment.templates.first).template.effectiveJSON))
        #expect(printed.contains("login --token ***"))
        #expect(!printed.contains(secret))

        // Never from the command line: readable by every user of the host.
        let commandLine = TemplateLoader.load(text: template, inputs: DeploymentInputs(parameters: ["level": "2", "token": secret]))
        #expect(commandLine.errors.map(\.path.description) == ["parameters.token"])
        #expect(commandLine.errors.first?.message.contains("found it on the command line (--parameter)") == true, "\(commandLine.errors)")
        #expect(commandLine.diagnostics.allSatisfy { !$0.message.contains(secret) })

        let missing = TemplateLoader.load(text: template, inputs: DeploymentInputs(parameters: ["level": "2"]))
        #expect(missing.errors.first?.message.contains("KILN_PARAMETER_token") == true, "\(missing.errors)")

        let file = TemplateLoader.load(text: template, inputs: DeploymentInputs(parameters: ["level": "3"], fileParameters: ["token": JSONNode(.string(secret))]))
        #expect(file.errors.map(\.path.description) == ["parameters.level"])
        #expect(file.diagnostics.allSatisfy { !$0.message.contains(secret) })
    }

    @Test("scope functions use the documented stand-ins, which the context changes")
    func context() throws {
        let template = armTemplate(location: "[resourceGroup().location]",
                                   command: "[concat('echo ', subscription().subscriptionId, ' ', resourceGroup().name, ' ', deployment().name)]")
        let defaults = TemplateLoader.load(text: template, name: "file-name")
        #expect(defaults.isValid, "\(defaults.errors)")
        #expect(defaults.templates.first?.template.location == "westus2")
        #expect(command(defaults) == "echo 00000000-0000-0000-0000-000000000000 kiln file-name")
        let set = TemplateLoader.load(text: template, name: "file-name", inputs: DeploymentInputs(context: DeploymentContext(
            subscriptionId: "11111111-2222-3333-4444-555555555555", resourceGroupName: "images", resourceGroupLocation: "northeurope",
            deploymentName: "deploy1")))
        #expect(set.templates.first?.template.location == "northeurope")
        #expect(command(set) == "echo 11111111-2222-3333-4444-555555555555 images deploy1")
    }
}
