/// The Microsoft.VirtualMachineImages/imageTemplates resource, with AIB's defaults applied explicitly.
/// Values are what will run: `buildTimeoutInMinutes` 0 is stored as 240, an absent `vmSize` as Standard_D1_v2, and so on.
public struct ImageTemplate: Sendable, Equatable {
    public static let resourceType = "Microsoft.VirtualMachineImages/imageTemplates"

    /// The resource name (ARM `name`), or the file's name when the template has none.
    public var name: String
    public var apiVersion: APIVersion
    public var location: String
    public var tags: [KeyValue]
    public var identity: Identity?
    public var dependsOn: [String]
    public var properties: ImageTemplateProperties

    public init(name: String, apiVersion: APIVersion, location: String, tags: [KeyValue] = [],
                identity: Identity? = nil, dependsOn: [String] = [], properties: ImageTemplateProperties) {
        self.name = name
        self.apiVersion = apiVersion
        self.location = location
        self.tags = tags
        self.identity = identity
        self.dependsOn = dependsOn
        self.properties = properties
    }
}

/// A string pair kept in file order (tags, artifactTags).
public struct KeyValue: Sendable, Equatable {
    public var key: String
    public var value: String
    public init(_ key: String, _ value: String) {
        self.key = key
        self.value = value
    }
}

public enum APIVersion: String, Sendable, CaseIterable, Comparable {
    case v2019_05_01_preview = "2019-05-01-preview"
    case v2020_02_14 = "2020-02-14"
    case v2021_10_01 = "2021-10-01"
    case v2022_02_14 = "2022-02-14"
    case v2022_07_01 = "2022-07-01"
    case v2023_07_01 = "2023-07-01"
    case v2024_02_01 = "2024-02-01"

    /// The newest version Kiln knows; a later one is read with its rules.
    public static let newest = APIVersion.v2024_02_01

    public static func < (lhs: APIVersion, rhs: APIVersion) -> Bool { lhs.rawValue < rhs.rawValue }

    /// `YYYY-MM-DD` with an optional `-preview` suffix: the shape of an ARM API version.
    static func isDate(_ text: String) -> Bool {
        let date = text.hasSuffix("-preview") ? String(text.dropLast("-preview".count)) : text
        let parts = date.split(separator: "-", omittingEmptySubsequences: false)
        return parts.count == 3 && parts.map(\.count) == [4, 2, 2] && parts.allSatisfy { $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) }
    }
}

public struct Identity: Sendable, Equatable {
    public var type: String?
    public var userAssignedIdentities: [String]
}

public struct ImageTemplateProperties: Sendable, Equatable {
    public static let defaultBuildTimeoutInMinutes = 240
    public static let maximumBuildTimeoutInMinutes = 960

    public var buildTimeoutInMinutes: Int
    public var vmProfile: VMProfile
    public var source: ImageSource
    public var customize: [Customizer]
    public var validate: ValidationProfile?
    public var distribute: [Distributor]
    public var errorHandling: ErrorHandling
    public var optimize: Optimize?
    public var stagingResourceGroup: String?
    public var autoRun: AutoRun?
    public var managedResourceTags: [KeyValue]

    public init(buildTimeoutInMinutes: Int = defaultBuildTimeoutInMinutes, vmProfile: VMProfile = VMProfile(),
                source: ImageSource, customize: [Customizer] = [], validate: ValidationProfile? = nil,
                distribute: [Distributor], errorHandling: ErrorHandling = ErrorHandling(), optimize: Optimize? = nil,
                stagingResourceGroup: String? = nil, autoRun: AutoRun? = nil, managedResourceTags: [KeyValue] = []) {
        self.buildTimeoutInMinutes = buildTimeoutInMinutes
        self.vmProfile = vmProfile
        self.source = source
        self.customize = customize
        self.validate = validate
        self.distribute = distribute
        self.errorHandling = errorHandling
        self.optimize = optimize
        self.stagingResourceGroup = stagingResourceGroup
        self.autoRun = autoRun
        self.managedResourceTags = managedResourceTags
    }
}

public struct VMProfile: Sendable, Equatable {
    public static let defaultVMSize = "Standard_D1_v2"

    public var vmSize: String
    /// 0 means "the source image's size".
    public var osDiskSizeGB: Int
    public var vnetConfig: VNetConfig?
    public var userAssignedIdentities: [String]

    public init(vmSize: String = defaultVMSize, osDiskSizeGB: Int = 0, vnetConfig: VNetConfig? = nil,
                userAssignedIdentities: [String] = []) {
        self.vmSize = vmSize
        self.osDiskSizeGB = osDiskSizeGB
        self.vnetConfig = vnetConfig
        self.userAssignedIdentities = userAssignedIdentities
    }
}

public struct VNetConfig: Sendable, Equatable {
    public var subnetId: String?
    public var containerInstanceSubnetId: String?
    public var proxyVmSize: String?
}

public enum ImageSource: Sendable, Equatable {
    case platformImage(PlatformImage)
    case managedImage(imageId: String)
    case sharedImageVersion(imageVersionId: String)

    public var typeName: String {
        switch self {
        case .platformImage: "PlatformImage"
        case .managedImage: "ManagedImage"
        case .sharedImageVersion: "SharedImageVersion"
        }
    }
}

public struct PlatformImage: Sendable, Equatable {
    public var publisher: String
    public var offer: String
    public var sku: String
    public var version: String
    public var planInfo: PlanInfo?

    public init(publisher: String, offer: String, sku: String, version: String, planInfo: PlanInfo? = nil) {
        self.publisher = publisher
        self.offer = offer
        self.sku = sku
        self.version = version
        self.planInfo = planInfo
    }

    /// `Publisher:Offer:Sku:Version`, the form `az vm image list` prints.
    public var urn: String { "\(publisher):\(offer):\(sku):\(version)" }
}

public struct PlanInfo: Sendable, Equatable {
    public var planName: String
    public var planProduct: String
    public var planPublisher: String
}

/// Where a Shell or PowerShell customizer's commands come from.
public enum ScriptSource: Sendable, Equatable {
    case inline([String])
    case scriptUri(String)
}

public struct ShellCustomizer: Sendable, Equatable {
    public var name: String?
    public var script: ScriptSource
    public var sha256Checksum: String?
    public init(name: String?, script: ScriptSource, sha256Checksum: String? = nil) {
        self.name = name
        self.script = script
        self.sha256Checksum = sha256Checksum
    }
}

public struct PowerShellCustomizer: Sendable, Equatable {
    public var name: String?
    public var script: ScriptSource
    public var sha256Checksum: String?
    public var runElevated: Bool
    public var runAsSystem: Bool
    public var validExitCodes: [Int]
    public init(name: String?, script: ScriptSource, sha256Checksum: String? = nil, runElevated: Bool = false,
                runAsSystem: Bool = false, validExitCodes: [Int] = [0]) {
        self.name = name
        self.script = script
        self.sha256Checksum = sha256Checksum
        self.runElevated = runElevated
        self.runAsSystem = runAsSystem
        self.validExitCodes = validExitCodes
    }
}

public struct FileCustomizer: Sendable, Equatable {
    public var name: String?
    public var sourceUri: String
    public var destination: String
    public var sha256Checksum: String?
    public init(name: String?, sourceUri: String, destination: String, sha256Checksum: String? = nil) {
        self.name = name
        self.sourceUri = sourceUri
        self.destination = destination
        self.sha256Checksum = sha256Checksum
    }
}

public struct WindowsRestartCustomizer: Sendable, Equatable {
    public static let defaultRestartCommand = #"shutdown /r /f /t 0 /c "packer restart""#
    public static let defaultRestartTimeout = "5m"

    public var name: String?
    public var restartCommand: String
    public var restartCheckCommand: String?
    /// As written ("5m", "2h"); `restartTimeoutDuration` is the parsed value.
    public var restartTimeout: String
    public var restartTimeoutDuration: Duration
}

public struct WindowsUpdateCustomizer: Sendable, Equatable {
    public static let defaultSearchCriteria = "BrowseOnly=0 and IsInstalled=0"
    public static let defaultFilters = ["include:$true"]
    public static let defaultUpdateLimit = 1000

    public var name: String?
    public var searchCriteria: String
    public var filters: [String]
    public var updateLimit: Int
}

public enum Customizer: Sendable, Equatable {
    case shell(ShellCustomizer)
    case powerShell(PowerShellCustomizer)
    case file(FileCustomizer)
    case windowsRestart(WindowsRestartCustomizer)
    case windowsUpdate(WindowsUpdateCustomizer)

    public var typeName: String {
        switch self {
        case .shell: "Shell"
        case .powerShell: "PowerShell"
        case .file: "File"
        case .windowsRestart: "WindowsRestart"
        case .windowsUpdate: "WindowsUpdate"
        }
    }

    public var name: String? {
        switch self {
        case .shell(let step): step.name
        case .powerShell(let step): step.name
        case .file(let step): step.name
        case .windowsRestart(let step): step.name
        case .windowsUpdate(let step): step.name
        }
    }

    /// True for customizers that only make sense on a Windows guest.
    public var isWindowsOnly: Bool {
        switch self {
        case .windowsRestart, .windowsUpdate: true
        default: false
        }
    }
}

public struct ValidationProfile: Sendable, Equatable {
    public var continueDistributeOnFailure: Bool
    public var sourceValidationOnly: Bool
    public var inVMValidations: [Customizer]
}

public struct ManagedImageDistributor: Sendable, Equatable {
    public var imageId: String
    public var location: String
}

public enum VersioningScheme: Sendable, Equatable {
    /// The next version after the newest with this major (nil or -1: across all majors).
    case latest(major: Int?)
    /// The source image's version.
    case source
}

public struct TargetRegion: Sendable, Equatable {
    public var name: String
    public var replicaCount: Int
    public var storageAccountType: String?
}

public struct SharedImageDistributor: Sendable, Equatable {
    public static let storageAccountTypes = ["Standard_LRS", "Standard_ZRS", "Premium_LRS"]

    public var galleryImageId: String
    public var replicationRegions: [String]
    public var targetRegions: [TargetRegion]
    public var excludeFromLatest: Bool
    public var storageAccountType: String?
    public var versioning: VersioningScheme?
}

public struct VHDDistributor: Sendable, Equatable {
    public var uri: String?
}

public struct Distributor: Sendable, Equatable {
    public enum Target: Sendable, Equatable {
        case managedImage(ManagedImageDistributor)
        case sharedImage(SharedImageDistributor)
        case vhd(VHDDistributor)
    }

    public var runOutputName: String
    public var artifactTags: [KeyValue]
    public var target: Target

    public var typeName: String {
        switch target {
        case .managedImage: "ManagedImage"
        case .sharedImage: "SharedImage"
        case .vhd: "VHD"
        }
    }
}

public enum ErrorAction: String, Sendable, Equatable, CaseIterable {
    case cleanup
    case abort
}

public struct ErrorHandling: Sendable, Equatable {
    public var onCustomizerError: ErrorAction
    public var onValidationError: ErrorAction
    public init(onCustomizerError: ErrorAction = .cleanup, onValidationError: ErrorAction = .cleanup) {
        self.onCustomizerError = onCustomizerError
        self.onValidationError = onValidationError
    }
}

public struct Optimize: Sendable, Equatable {
    public var vmBootEnabled: Bool
}

public struct AutoRun: Sendable, Equatable {
    public var enabled: Bool
}
