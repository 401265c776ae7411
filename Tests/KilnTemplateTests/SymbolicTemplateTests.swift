import Testing
@testable import KilnTemplate

/// A languageVersion 2.0 template whose resources object holds `resources` (members text) and, optionally, the
/// given definitions, functions and parameters.
private func symbolic(_ resources: String, parameters: String = "{}", definitions: String? = nil, functions: String? = nil,
                      languageVersion: String? = "2.0") -> String {
    let version = languageVersion.map { #""languageVersion": "\#($0)","# } ?? ""
    let definitionsText = definitions.map { #""definitions": \#($0),"# } ?? ""
    let functionsText = functions.map { #""functions": \#($0),"# } ?? ""
    return """
    {
      "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
      \(version)
      "contentVersion": "1.0.0.0",
      \(definitionsText)
      \(functionsText)
      "parameters": \(parameters),
      "resources": {\(resources)}
    }
    """
}

private func imageTemplate(command: String = "echo hi", extra: String = "") -> String {
    """
    {"type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-07-01", "name": "img", "location": "westus2",\(testIdentity)
     \(extra)
     "properties": {
       "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12", "version": "latest"},
       "customize": [{"type": "Shell", "name": "one", "inline": [\(JSONPrinter.quote(command))]}],
       "distribute": [{"type": "VHD", "runOutputName": "vhd"}]}}
    """
}

private let identityResource = #""identity": {"type": "Microsoft.ManagedIdentity/userAssignedIdentities", "apiVersion": "2023-01-31", "name": "builder", "location": "westus2"}"#

private func firstCommand(_ result: TemplateLoadResult) -> String? {
    guard case .shell(let step)? = result.templates.first?.template.properties.customize.first, case .inline(let lines) = step.script else { return nil }
    return lines.first
}

@Suite("languageVersion 2.0 templates and user-defined functions")
struct SymbolicTemplateTests {
    @Test("resources keyed by symbolic name: the image template is read with its symbolic path; existing resources are skipped")
    func symbolicResources() throws {
        let text = symbolic("""
        "vnet": {"existing": true, "type": "Microsoft.Network/virtualNetworks", "apiVersion": "2023-04-01", "name": "lab"},
        \(identityResource),
        "imageTemplate": \(imageTemplate(command: "[format('echo {0}', reference('identity').principalId)]", extra: #""dependsOn": ["identity"],"#))
        """)
        let result = TemplateLoader.load(text: text)
        #expect(result.isValid, "\(result.errors)")
        #expect(result.templates.count == 1)
        let loaded = try #require(result.templates.first)
        #expect(loaded.basePath.description == "resources.imageTemplate")
        #expect(loaded.stepPaths.customize.first?.description == "resources.imageTemplate.properties.customize[0]")
        #expect(loaded.template.dependsOn == ["identity"])
        // reference() of a symbolic name is a live value: a placeholder, with a warning at its path.
        #expect(result.warnings.map(\.path.description).contains("resources.imageTemplate.properties.customize[0].inline[0]"))
    }

    @Test("an existing image template is a reference, not a deployment: nothing to build")
    func existingImageTemplate() {
        let text = symbolic(#""old": {"existing": true, "type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-07-01", "name": "old"}"#)
        let result = TemplateLoader.load(text: text)
        #expect(result.errors.map(\.path.description) == ["resources"])
        #expect(result.errors.first?.message.contains("only \"existing\": true references (resources.old)") == true, "\(result.errors)")
    }

    @Test("messages inside a symbolic resource name its path")
    func symbolicPaths() {
        let text = symbolic(#""imageTemplate": \#(imageTemplate(command: "[parameters('missing')]"))"#)
        let result = TemplateLoader.load(text: text)
        #expect(result.errors.map(\.path.description) == ["resources.imageTemplate.properties.customize[0].inline[0]"])
    }

    @Test("condition and copy on symbolic resources, and a nested deployment inside one")
    func conditionCopyAndNested() throws {
        let skipped = symbolic(#""imageTemplate": \#(imageTemplate(extra: #""condition": "[equals(parameters('build'), 'yes')]","#))"#,
                               parameters: #"{"build": {"type": "string", "defaultValue": "no"}}"#)
        #expect(TemplateLoader.load(text: skipped).errors.map(\.path.description) == ["resources"])
        let built = TemplateLoader.load(text: skipped, parameters: ["build": "yes"])
        #expect(built.isValid, "\(built.errors)")
        #expect(built.warnings.allSatisfy { !$0.path.description.hasSuffix("condition") }, "\(built.warnings)")

        let copies = symbolic(#""images": \#(imageTemplate(command: "[format('echo {0}', copyIndex())]", extra: #""copy": {"name": "images", "count": 2},"#))"#)
        let copied = TemplateLoader.load(text: copies)
        #expect(copied.isValid, "\(copied.errors)")
        #expect(copied.templates.map(\.basePath.description) == ["resources.images", "resources.images"])

        let nested = symbolic("""
        "inner": {"type": "Microsoft.Resources/deployments", "apiVersion": "2022-09-01", "name": "inner",
          "properties": {"mode": "Incremental", "expressionEvaluationOptions": {"scope": "inner"},
            "template": {"languageVersion": "2.0", "contentVersion": "1.0.0.0", "resources": {"img": \(imageTemplate())}}}}
        """)
        let read = TemplateLoader.load(text: nested)
        #expect(read.isValid, "\(read.errors)")
        #expect(read.templates.first?.basePath.description == "resources.inner.properties.template.resources.img")
    }

    @Test("resources as an object need languageVersion 2.0; an unknown languageVersion is an error")
    func languageVersionRequired() {
        let without = TemplateLoader.load(text: symbolic(#""img": \#(imageTemplate())"#, languageVersion: nil))
        #expect(without.errors.map(\.path.description) == ["resources"])
        #expect(without.errors.first?.message.contains("languageVersion") == true)
        let unknown = TemplateLoader.load(text: symbolic(#""img": \#(imageTemplate())"#, languageVersion: "3.0"))
        #expect(unknown.errors.map(\.path.description).first == "languageVersion")
    }

    @Test("definitions: a $ref parameter gets the definition's type and constraints")
    func definitions() throws {
        let definitions = ##"{"osName": {"type": "string", "allowedValues": ["debian", "ubuntu"]}, "distro": {"$ref": "#/definitions/osName"}, "count": {"type": "int", "minValue": 1, "maxValue": 3}, "tagged": {"type": "object", "properties": {"a": {"type": "string"}}}}"##
        let parameters = ##"{"os": {"$ref": "#/definitions/distro", "defaultValue": "debian"}, "copies": {"$ref": "#/definitions/count", "defaultValue": 2}, "tags": {"$ref": "#/definitions/tagged", "defaultValue": {"a": "b"}}}"##
        let text = symbolic(#""img": \#(imageTemplate(command: "[format('echo {0} {1}', parameters('os'), parameters('copies'))]"))"#,
                            parameters: parameters, definitions: definitions)
        let result = TemplateLoader.load(text: text)
        #expect(result.isValid, "\(result.errors)")
        #expect(firstCommand(result) == "echo debian 2")
        // The referenced type is the declared type: an int from the command line is converted, a wrong string refused.
        let wrong = TemplateLoader.load(text: text, parameters: ["os": "arch", "copies": "7"])
        #expect(Set(wrong.errors.map(\.path.description)) == ["parameters.os", "parameters.copies"], "\(wrong.errors)")
        let unknown = TemplateLoader.load(text: symbolic(##""img": \##(imageTemplate())"##, parameters: ##"{"x": {"$ref": "#/definitions/nope"}}"##, definitions: "{}"))
        #expect(unknown.errors.map(\.path.description) == ["parameters.x.$ref"])
        let cycle = TemplateLoader.load(text: symbolic(##""img": \##(imageTemplate())"##, parameters: ##"{"x": {"$ref": "#/definitions/a", "defaultValue": "v"}}"##,
                                                       definitions: ##"{"a": {"$ref": "#/definitions/b"}, "b": {"$ref": "#/definitions/a"}}"##))
        #expect(cycle.errors.count == 1)
    }

    @Test("minLength, maxLength, minValue and maxValue apply to every parameter")
    func parameterConstraints() {
        let text = armTemplate(parameters: #"{"word": {"type": "string", "minLength": 2, "maxLength": 4, "defaultValue": "abc"}, "n": {"type": "int", "minValue": 1, "defaultValue": 1}}"#,
                               command: "[concat(parameters('word'), string(parameters('n')))]")
        #expect(TemplateLoader.load(text: text).isValid)
        let broken = TemplateLoader.load(text: text, parameters: ["word": "abcdef", "n": "0"])
        #expect(Set(broken.errors.map(\.path.description)) == ["parameters.word", "parameters.n"])
        #expect(broken.errors.contains { $0.message.contains("maxLength") })
    }
}
