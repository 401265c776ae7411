/// Generated templates for measuring the loader: the validate benchmark (`kiln-bench validate`) and the test that a
/// large template completes use the same shape.
public enum SyntheticTemplates {
    /// A minified deployment template with `resources` network security groups (each with expressions) and one
    /// imageTemplates resource last, at `resources[resources]`. 2,000 resources make about 1 MB.
    public static func minifiedDeployment(resources count: Int) -> String {
        var resources: [String] = []
        resources.reserveCapacity(count + 1)
        for index in 0..<count {
            resources.append(#"{"type":"Microsoft.Network/networkSecurityGroups","apiVersion":"2023-04-01","name":"[concat(variables('prefix'),'-\#(index)')]","location":"[resourceGroup().location]","properties":{"securityRules":[{"name":"r\#(index)","properties":{"priority":\#(100 + index % 3000),"direction":"Inbound","access":"Allow","protocol":"Tcp","sourceAddressPrefix":"*","sourcePortRange":"*","destinationAddressPrefix":"*","destinationPortRange":"\#(index)","description":"[format('rule {0} of {1}, allowing inbound TCP', \#(index), parameters('owner'))]"}}]}}"#)
        }
        resources.append(#"{"type":"Microsoft.VirtualMachineImages/imageTemplates","apiVersion":"2022-07-01","name":"img","location":"[resourceGroup().location]","identity":{"type":"UserAssigned","userAssignedIdentities":{"[resourceId('Microsoft.ManagedIdentity/userAssignedIdentities','builder')]":{}}},"properties":{"source":{"type":"PlatformImage","publisher":"Debian","offer":"debian-12","sku":"12","version":"latest"},"customize":[{"type":"Shell","name":"s","inline":["[concat('echo ', parameters('owner'))]"]}],"distribute":[{"type":"VHD","runOutputName":"v"}]}}"#)
        return #"{"$schema":"https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#","contentVersion":"1.0.0.0","parameters":{"owner":{"type":"string","defaultValue":"kiln"}},"variables":{"prefix":"nsg"},"resources":["#
            + resources.joined(separator: ",") + "]}"
    }
}
