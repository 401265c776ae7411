import ArgumentParser
import Foundation
import KilnTemplate

/// The values an ARM deployment template takes from outside: `--parameter key=value` (repeatable), parameter files
/// as `az deployment group create --parameters @file.json` takes them (`--parameters FILE`, or `--parameter @FILE`),
/// and the stand-ins for the deployment's subscription, resource group and name.
struct ParameterOptions: ParsableArguments {
    @Option(name: .customLong("parameter"), help: ArgumentHelp("Set an ARM template parameter, or read a parameter file with @FILE (repeatable).", valueName: "key=value"))
    var rawParameters: [String] = []

    @Option(name: .customLong("parameters"), help: ArgumentHelp("Read an ARM deployment parameter file ({\"parameters\": {\"x\": {\"value\": …}}}) (repeatable; later files win).", valueName: "file"))
    var parameterFiles: [String] = []

    @Option(name: .customLong("subscription-id"), help: "The subscription ID subscription() and resourceId() return (default \(DeploymentContext.defaultSubscriptionId)).")
    var subscriptionId: String?

    @Option(name: .customLong("resource-group"), help: "The resource group name resourceGroup() and resourceId() return (default \(DeploymentContext.defaultResourceGroup)).")
    var resourceGroup: String?

    @Option(name: .customLong("resource-group-location"), help: "The location resourceGroup() returns (default \(DeploymentContext.defaultLocation)).")
    var resourceGroupLocation: String?

    @Option(name: .customLong("deployment-name"), help: "The name deployment() returns (default: the template file's name).")
    var deploymentName: String?

    /// The `key=value` pairs (not the `@FILE` entries).
    var parameters: [String: String] {
        var values: [String: String] = [:]
        for item in rawParameters where !item.hasPrefix("@") {
            guard let equals = item.firstIndex(of: "=") else { continue }
            values[String(item[..<equals])] = String(item[item.index(after: equals)...])
        }
        return values
    }

    var files: [String] {
        parameterFiles.map { $0.hasPrefix("@") ? String($0.dropFirst()) : $0 }
            + rawParameters.filter { $0.hasPrefix("@") }.map { String($0.dropFirst()) }
    }

    var context: DeploymentContext {
        var context = DeploymentContext()
        if let subscriptionId { context.subscriptionId = subscriptionId }
        if let resourceGroup { context.resourceGroupName = resourceGroup }
        if let resourceGroupLocation { context.resourceGroupLocation = resourceGroupLocation }
        context.deploymentName = deploymentName
        return context
    }

    /// Reads the parameter files; a file that cannot be read is a usage error naming it.
    func inputs() throws -> DeploymentInputs {
        var fileValues: [String: JSONNode] = [:]
        for file in files {
            do {
                for (key, value) in try DeploymentInputs.readParameterFile(file) { fileValues[key] = value }
            } catch {
                throw ValidationError(error.description)
            }
        }
        return DeploymentInputs(parameters: parameters, fileParameters: fileValues, context: context,
                                environment: ProcessInfo.processInfo.environment)
    }

    func validate() throws {
        for item in rawParameters where !item.hasPrefix("@") {
            guard let equals = item.firstIndex(of: "="), equals != item.startIndex else {
                throw ValidationError("--parameter expects key=value or @FILE, found \"\(item)\"")
            }
        }
    }
}
