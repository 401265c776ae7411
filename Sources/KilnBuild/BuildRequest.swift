import Foundation
import KilnMachine
import KilnStore
import KilnSupport
import KilnTemplate

/// What a caller asks of a build: the template, its inputs and the command line's choices.
public struct BuildRequest: Sendable {
    public var templatePath: String
    /// Which imageTemplates resource, when an ARM template holds several.
    public var name: String?
    public var parameters: [String: String]
    public var state: StateDirectory
    public var accelerator: AcceleratorChoice
    public var libvirtURI: String?
    /// Overrides errorHandling.onCustomizerError / onValidationError.
    public var onError: ErrorAction?
    public var sshTimeout: Duration
    /// The created template this run belongs to (`kiln template run`); nil for a one-shot `kiln build`, whose run is
    /// recorded under the template's own name.
    public var createdTemplateName: String?
    /// A run ID chosen by the caller (`template run --no-wait` prints it before the build starts).
    public var runID: String?
    /// Resume from the longest matching chain of checkpoints in the build cache (`--no-cache`: false).
    public var useCache: Bool
    /// Keep a checkpoint after boot and after each customizer (`--no-checkpoints`: false).
    public var writeCheckpoints: Bool
    /// The build cache's size limit, enforced after the build (least recently used checkpoints go first).
    public var cacheLimitBytes: UInt64
    /// `--resume RUN`: continue from the last checkpoint of that run that still matches the template.
    public var resumeRun: String?
    /// `--offline`: no network. Downloads come from the download cache (`kiln fetch`); a catalog image that is not
    /// built yet is an error instead of a build.
    public var offline: Bool
    /// Everything the template's parameters and scope functions take: `parameters`, parameter files, the secure
    /// parameters' environment, the subscription and resource group stand-ins.
    public var inputs: DeploymentInputs
    /// `--force`: a VHD target whose uri names an existing file replaces it (without it, the build refuses to start).
    public var force: Bool
    /// `--isolate-network`: the guest reaches nothing outside, the host's loopback included (MachineOptions).
    public var isolateNetwork = false
    /// A remote libvirt host (`--connect qemu+ssh://…`, `--pool`): the VM runs there, Kiln's state stays here.
    public var remote: RemoteHost?
    /// The other hosts that could take the build (several `--connect`, ranked): the build goes to the next one when
    /// `remote` cannot start it.
    public var fallbackHosts: [RemoteHost] = []

    public init(templatePath: String, name: String? = nil, parameters: [String: String] = [:], inputs: DeploymentInputs? = nil, state: StateDirectory,
                accelerator: AcceleratorChoice = .auto, libvirtURI: String? = nil, onError: ErrorAction? = nil,
                sshTimeout: Duration = .seconds(20 * 60), createdTemplateName: String? = nil, runID: String? = nil,
                useCache: Bool = true, writeCheckpoints: Bool = true, cacheLimitBytes: UInt64 = CheckpointCache.defaultLimitBytes(),
                resumeRun: String? = nil, offline: Bool = false, force: Bool = false) {
        self.templatePath = templatePath
        self.name = name
        self.parameters = parameters
        self.state = state
        self.accelerator = accelerator
        self.libvirtURI = libvirtURI
        self.onError = onError
        self.sshTimeout = sshTimeout
        self.createdTemplateName = createdTemplateName
        self.runID = runID
        self.useCache = useCache
        self.writeCheckpoints = writeCheckpoints
        self.cacheLimitBytes = cacheLimitBytes
        self.resumeRun = resumeRun
        self.offline = offline
        self.force = force
        self.inputs = inputs ?? DeploymentInputs(parameters: parameters, environment: ProcessInfo.processInfo.environment)
    }
}

/// What a finished build leaves: its record, and the VM if errorHandling kept it.
public struct BuildResult: Sendable {
    public var record: RunRecord
    public var runDirectory: String
    public var keptVM: KeptVM?
}

/// The AIB message for a build that ran out of time.
public let buildTimeoutMessage = "[ERROR] Failed while waiting for packerizer: Timeout waiting for microservice to complete: 'context deadline exceeded'"
