import Foundation

/// Where a deployment template pretends to be deployed: the values `subscription()`, `resourceGroup()` and
/// `deployment()` return. Azure takes them from the deployment's target; a local build has none, so Kiln uses fixed,
/// documented stand-ins that `--subscription-id`, `--resource-group`, `--resource-group-location` and
/// `--deployment-name` change. Shapes: https://learn.microsoft.com/azure/azure-resource-manager/templates/template-functions-scope
public struct DeploymentContext: Sendable, Equatable, Codable {
    public static let defaultSubscriptionId = "00000000-0000-0000-0000-000000000000"
    public static let defaultTenantId = "00000000-0000-0000-0000-000000000000"
    public static let defaultResourceGroup = "kiln"
    public static let defaultLocation = "westus2"

    public var subscriptionId: String
    public var tenantId: String
    public var resourceGroupName: String
    public var resourceGroupLocation: String
    /// nil: the template file's name without extension, as `az deployment group create` names a deployment.
    public var deploymentName: String?

    public init(subscriptionId: String = defaultSubscriptionId, tenantId: String = defaultTenantId,
                resourceGroupName: String = defaultResourceGroup, resourceGroupLocation: String = defaultLocation,
                deploymentName: String? = nil) {
        self.subscriptionId = subscriptionId
        self.tenantId = tenantId
        self.resourceGroupName = resourceGroupName
        self.resourceGroupLocation = resourceGroupLocation
        self.deploymentName = deploymentName
    }

    var subscriptionValue: JSONValue {
        .object([
            JSONMember("id", .string("/subscriptions/\(subscriptionId)")),
            JSONMember("subscriptionId", .string(subscriptionId)),
            JSONMember("tenantId", .string(tenantId)),
            JSONMember("displayName", .string("Kiln local subscription")),
        ])
    }

    var resourceGroupValue: JSONValue {
        .object([
            JSONMember("id", .string("/subscriptions/\(subscriptionId)/resourceGroups/\(resourceGroupName)")),
            JSONMember("name", .string(resourceGroupName)),
            JSONMember("type", .string("Microsoft.Resources/resourceGroups")),
            JSONMember("location", .string(resourceGroupLocation)),
            JSONMember("tags", .object([])),
            JSONMember("properties", .object([JSONMember("provisioningState", .string("Succeeded"))])),
        ])
    }

    func deploymentValue(name: String) -> JSONValue {
        .object([
            JSONMember("name", .string(deploymentName ?? name)),
            JSONMember("properties", .object([JSONMember("mode", .string("Incremental")), JSONMember("provisioningState", .string("Accepted"))])),
        ])
    }
}

/// Everything a template's parameters can be given from outside: `--parameter key=value` (text converted to the
/// declared type), parameter files (`--parameters FILE`, typed JSON values), and for `securestring`/`secureObject`
/// parameters the environment variable `KILN_PARAMETER_<name>`. A `--parameter` wins over a file, a file over the
/// environment, and all over `defaultValue`.
public struct DeploymentInputs: Sendable, Equatable {
    public static let secureEnvironmentPrefix = "KILN_PARAMETER_"

    public var parameters: [String: String]
    public var fileParameters: [String: JSONNode]
    public var context: DeploymentContext
    public var environment: [String: String]

    public init(parameters: [String: String] = [:], fileParameters: [String: JSONNode] = [:],
                context: DeploymentContext = DeploymentContext(), environment: [String: String] = [:]) {
        self.parameters = parameters
        self.fileParameters = fileParameters
        self.context = context
        self.environment = environment
    }

    /// The file values and `--parameter`s as `key=value` text that reads back to the same values (a string as itself,
    /// anything else as JSON), for records that keep parameters as text (`kiln template create`).
    public var flattenedParameters: [String: String] {
        var values: [String: String] = [:]
        for (key, node) in fileParameters {
            values[key] = node.stringValue ?? JSONPrinter.compact(node)
        }
        for (key, text) in parameters { values[key] = text }
        return values
    }

    /// Reads a parameter file as `az deployment group create --parameters @file.json` takes it:
    /// `{"$schema": …, "contentVersion": …, "parameters": {"name": {"value": …}}}`
    /// (https://learn.microsoft.com/azure/azure-resource-manager/templates/parameter-files). Key Vault
    /// `reference`s cannot be resolved locally and are an error.
    public static func readParameterFile(_ path: String) throws(ParameterFileError) -> [String: JSONNode] {
        let bytes: [UInt8]
        switch InputFile.read(path, what: "parameter file") {
        case .success(let read): bytes = read
        case .failure(let refusal): throw ParameterFileError(file: path, message: refusal.message)
        }
        let document: JSONNode
        do {
            document = try JSONParser.parse(bytes: bytes)
        } catch {
            throw ParameterFileError(file: path, message: "malformed JSON at \(error.position): \(error.message)")
        }
        guard document.members != nil else {
            throw ParameterFileError(file: path, message: "expected a parameter file object with \"parameters\", found \(document.summary)")
        }
        guard let parameters = document.member("parameters")?.value else {
            throw ParameterFileError(file: path, message: "expected a \"parameters\" object (a deployment parameter file), found none")
        }
        guard let members = parameters.members else {
            throw ParameterFileError(file: path, message: "parameters: expected an object, found \(parameters.summary)")
        }
        var values: [String: JSONNode] = [:]
        for member in members {
            if member.value.member("reference") != nil {
                throw ParameterFileError(file: path, message: "parameters.\(member.key): expected a \"value\", found a Key Vault \"reference\", which a local build cannot resolve; give the value in the environment variable \(secureEnvironmentPrefix)\(member.key) instead")
            }
            guard let value = member.value.member("value")?.value else {
                throw ParameterFileError(file: path, message: "parameters.\(member.key): expected an object with \"value\", found \(member.value.summary)")
            }
            values[member.key] = value
        }
        return values
    }
}

public struct ParameterFileError: Error, Sendable, CustomStringConvertible {
    public var file: String
    public var message: String
    public var description: String { "\(file): \(message)" }
}
