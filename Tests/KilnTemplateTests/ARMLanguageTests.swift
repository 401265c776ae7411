import Foundation
import Testing
@testable import KilnTemplate

/// Evaluates one expression string with no parameters or variables.
private func eval(_ text: String, context: DeploymentContext = DeploymentContext()) throws -> JSONValue? {
    try ARMEvaluator(parameterValues: [:], parameterProblems: [:], variableNodes: [:], context: context, deploymentName: "deploy").evaluateString(text)
}

private func string(_ text: String) -> JSONValue { .string(text) }

/// An ARM deployment template around one imageTemplates resource whose `location` and first inline command are
/// given, with parameters and variables.
func armTemplate(parameters: String = "{}", variables: String = "{}", location: String = "westus2", command: String = "echo hi",
                 identity: String = testIdentity) -> String {
    """
    {
      "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
      "contentVersion": "1.0.0.0",
      "parameters": \(parameters),
      "variables": \(variables),
      "resources": [{
        "type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-07-01", "name": "img",
        "location": \(JSONPrinter.quote(location)),\(identity)
        "properties": {
          "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12", "version": "latest"},
          "customize": [{"type": "Shell", "name": "one", "inline": [\(JSONPrinter.quote(command))]}],
          "distribute": [{"type": "VHD", "runOutputName": "vhd"}]
        }
      }]
    }
    """
}

private func firstCommand(_ result: TemplateLoadResult) -> String? {
    guard case .shell(let step)? = result.templates.first?.template.properties.customize.first, case .inline(let lines) = step.script else { return nil }
    return lines.first
}

@Suite("ARM template language")
struct ARMLanguageTests {
    @Test("comments are accepted and positions after them stay right")
    func comments() throws {
        let text = "// a template\n{\n  /* the type\n     spans lines */ \"a\": 1, // trailing\n  \"b\": [1, /* inline */ 2]\n}"
        let node = try JSONParser.parse(text)
        #expect(node.member("b")?.value.position == SourcePosition(line: 5, column: 8))
        do {
            _ = try JSONParser.parse("{\n  /* never closed\n  \"a\": 1\n}")
            Issue.record("expected an error")
        } catch {
            #expect(error.position == SourcePosition(line: 2, column: 3))
            #expect(error.message.contains("*/"))
        }
        let result = TemplateLoader.load(text: "// header\n" + linuxTemplate().replacingOccurrences(of: "\"location\": \"westus2\",", with: "\"location\": \"westus2\", /* region */"))
        #expect(result.isValid, "\(result.errors)")
    }

    @Test("nesting 10,000 levels deep is a clear error, not a crash")
    func deepNesting() {
        let text = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
        let result = TemplateLoader.load(text: text)
        #expect(result.errors.count == 1)
        #expect(result.errors.first?.message.contains("nested at most \(JSONParser.maximumDepth) levels") == true, "\(result.errors)")
        let deepCall = "[" + String(repeating: "concat(", count: 10_000) + "'x'" + String(repeating: ")", count: 10_000) + "]"
        #expect(throws: ARMEvaluator.Failure.self) { try eval(deepCall) }
    }

    @Test("string functions", arguments: [
        ("[toLower('AbC')]", "abc"), ("[toUpper('AbC')]", "ABC"), ("[replace('a-b-c', '-', '_')]", "a_b_c"),
        ("[format('{0}-{1}-{{x}}', 'a', 2)]", "a-2-{x}"), ("[format('{0:N0} items', 8175133)]", "8,175,133 items"),
        ("[format('{0,4}|{1:D3}', 'a', 7)]", "   a|007"), ("[string(true)]", "True"), ("[string(createObject('a', 1))]", "{\"a\":1}"),
        ("[string(createArray(1, 'b'))]", "[1,\"b\"]"), ("[concat('a', 1, 'b')]", "a1b"),
        ("[uri('http://contoso.com/resources/', 'nested/azuredeploy.json')]", "http://contoso.com/resources/nested/azuredeploy.json"),
        ("[uri('http://contoso.com/resources/', '/nested/x.json')]", "http://contoso.com/resources/nested/x.json"),
        ("[uri('http://contoso.com/resources/azuredeploy.json', 'x.json')]", "http://contoso.com/resources/x.json"),
        ("[uri('http://contoso.com', 'x.json')]", "http://contoso.com/x.json"),
        ("[split('a,b;c', createArray(',', ';'))[2]]", "c"), ("[createArray('x', 'y')[1]]", "y"),
        ("[createObject('Name', 'v').name]", "v"), ("[createObject('a', createObject('b', 'deep'))['a'].b]", "deep"),
        ("[if(equals(1, 1), 'yes', 'no')]", "yes"), ("[if(not(equals('a', 'b')), 'differ', 'same')]", "differ"),
        ("[resourceGroup().location]", "westus2"), ("[resourceGroup().name]", "kiln"),
        ("[subscription().subscriptionId]", "00000000-0000-0000-0000-000000000000"), ("[deployment().name]", "deploy"),
        ("[resourceId('Microsoft.Network/virtualNetworks/subnets', 'net', 'default')]",
         "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/kiln/providers/Microsoft.Network/virtualNetworks/net/subnets/default"),
        ("[resourceId('other-rg', 'Microsoft.Compute/images', 'img')]",
         "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/other-rg/providers/Microsoft.Compute/images/img"),
        ("[resourceId('11111111-1111-1111-1111-111111111111', 'rg', 'Microsoft.Compute/galleries/images', 'g', 'd')]",
         "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/d"),
        ("[subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'abc')]",
         "/subscriptions/00000000-0000-0000-0000-000000000000/providers/Microsoft.Authorization/roleDefinitions/abc"),
        // The value microsoft/commercial-marketplace-offer-deploy's tests (test/UnitTests, ArmFunctionsTests) expect
        // from the deployment engine's own uniqueString for this input.
        ("[uniqueString('/subscriptions/31e9f9a0-9fd2-4294-a0a3-0101246d9700/resourceGroups/rg-modm201-20230913120256/providers/Microsoft.Compute/virtualMachines/bobjacmodm201')]",
         "yvjxno3je5on2"),
        ("[[not an expression]", "[not an expression]"),
    ])
    func strings(expression: String, expected: String) throws {
        #expect(try eval(expression) == string(expected))
    }

    @Test("logical, array, object and conversion functions")
    func values() throws {
        #expect(try eval("[int('42')]") == .number("42"))
        #expect(try eval("[bool('TRUE')]") == .bool(true))
        #expect(try eval("[and(true(), equals(2, 2), not(false()))]") == .bool(true))
        #expect(try eval("[or(false(), equals('a', 'b'))]") == .bool(false))
        #expect(try eval("[empty('')]") == .bool(true))
        #expect(try eval("[empty(createArray(1))]") == .bool(false))
        #expect(try eval("[length('héllo')]") == .number("5"))
        #expect(try eval("[length(concat(createArray(1, 2), createArray(3)))]") == .number("3"))
        #expect(try eval("[union(createArray(1, 2), createArray(2, 3))]") == .array([1, 2, 3].map { JSONNode(.number(String($0))) }))
        let merged = try #require(try eval("[union(createObject('a', createObject('x', 1, 'y', 2)), createObject('a', createObject('y', 3), 'b', 4))]"))
        #expect(JSONPrinter.compact(JSONNode(merged)) == #"{"a":{"x":1,"y":3},"b":4}"#)
        #expect(throws: ARMEvaluator.Failure.self) { try eval("[int('four')]") }
        #expect(throws: ARMEvaluator.Failure.self) { try eval("[createArray(1)[3]]") }
        #expect(throws: ARMEvaluator.Failure.self) { try eval("[utcNow()]") }
    }

    @Test("guid is a deterministic version 5 UUID; SHA-1 and the base32 alphabet are right")
    func guidAndHash() throws {
        let hex = ARMHash.sha1(Array("abc".utf8)).map { String(format: "%02x", $0) }.joined()
        #expect(hex == "a9993e364706816aba3e25717850c26c9cd0d89d")
        let first = try #require(try eval("[guid('a', 'b')]")?.stringValueOrNil)
        #expect(try eval("[guid('a', 'b')]")?.stringValueOrNil == first)
        #expect(try eval("[guid('a-b')]")?.stringValueOrNil == first)  // arguments are joined with "-", as ARM does
        #expect(first.count == 36 && Array(first)[14] == "5")
        #expect(ARMHash.uniqueString(["x"]).count == 13)
        #expect(ARMHash.uniqueString(["x"]).allSatisfy { "abcdefghijklmnopqrstuvwxyz234567".contains($0) })
    }

    @Test("utcNow is allowed in a parameter default and formats as .NET does")
    func utcNow() throws {
        let result = TemplateLoader.load(text: armTemplate(
            parameters: #"{"stamp": {"type": "string", "defaultValue": "[utcNow('yyyy-MM-dd')]"}}"#,
            command: "[concat('echo ', parameters('stamp'))]"))
        #expect(result.isValid, "\(result.errors)")
        let command = try #require(firstCommand(result))
        #expect(command.count == "echo 2026-01-01".count && command.hasPrefix("echo 20"), "\(command)")
        let misplaced = TemplateLoader.load(text: armTemplate(command: "[utcNow()]"))
        #expect(misplaced.errors.map(\.path.description) == ["resources[0].properties.customize[0].inline[0]"])
        #expect(misplaced.errors.first?.message.contains("defaultValue") == true)
    }

    @Test("expressions in property names")
    func propertyNames() throws {
        let id = "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/id/providers/Microsoft.ManagedIdentity/userAssignedIdentities/builder"
        let result = TemplateLoader.load(text: armTemplate(
            parameters: #"{"identityId": {"type": "string", "defaultValue": "\#(id)"}}"#,
            identity: #" "identity": {"type": "UserAssigned", "userAssignedIdentities": {"[parameters('identityId')]": {}}},"#))
        #expect(result.isValid, "\(result.errors)")
        #expect(result.templates.first?.template.identity?.userAssignedIdentities == [id])
    }

    @Test("variables that refer to each other are evaluated once each; huge results and deep chains are clear errors")
    func variableLimits() throws {
        // Each variable uses the previous one three times: 3^60 evaluations without memoization.
        var chain = [#""v0": "x""#]
        for index in 1...60 {
            chain.append(#""v\#(index)": "[if(equals(variables('v\#(index - 1)'), variables('v\#(index - 1)')), variables('v\#(index - 1)'), 'no')]""#)
        }
        let clock = ContinuousClock()
        let start = clock.now
        let memoized = TemplateLoader.load(text: armTemplate(variables: "{" + chain.joined(separator: ",") + "}", command: "[variables('v60')]"))
        #expect(memoized.isValid, "\(memoized.errors)")
        #expect(firstCommand(memoized) == "x")
        #expect(clock.now - start < .seconds(5))

        // Each variable doubles the previous one: 2^60 characters without a limit.
        var doubling = [#""d0": "xxxxxxxxxxxxxxxx""#]
        for index in 1...60 { doubling.append(#""d\#(index)": "[concat(variables('d\#(index - 1)'), variables('d\#(index - 1)'))]""#) }
        let huge = TemplateLoader.load(text: armTemplate(variables: "{" + doubling.joined(separator: ",") + "}", command: "[variables('d60')]"))
        #expect(huge.errors.map(\.path.description) == ["resources[0].properties.customize[0].inline[0]"])
        #expect(huge.errors.first?.message.contains("MiB") == true, "\(huge.errors)")

        var deep = [#""c0": "x""#]
        for index in 1...1_500 { deep.append(#""c\#(index)": "[variables('c\#(index - 1)')]""#) }
        let tooDeep = TemplateLoader.load(text: armTemplate(variables: "{" + deep.joined(separator: ",") + "}", command: "[variables('c1500')]"))
        #expect(tooDeep.errors.first?.message.contains("nested at most") == true, "\(tooDeep.errors)")
    }

    @Test("a generated 1 MB minified template with 2,000 resources validates")
    func largeTemplate() throws {
        let text = SyntheticTemplates.minifiedDeployment(resources: 2_000)
        #expect(text.utf8.count > 1_000_000)
        let clock = ContinuousClock()
        let start = clock.now
        let result = TemplateLoader.load(text: text)
        let elapsed = clock.now - start
        #expect(result.isValid, "\(result.errors.prefix(3))")
        #expect(result.templates.first?.basePath.description == "resources[2000]")
        // The release-build figure (target: under a second) is `kiln-bench validate`'s; a debug build is slower.
        #expect(elapsed < .seconds(30), "\(elapsed)")
    }
}
