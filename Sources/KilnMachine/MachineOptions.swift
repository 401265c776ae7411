import Foundation
import KilnSupport

/// How Kiln reaches a Windows guest: WinRM over HTTPS on 5986 as `username`. For a generalized image the
/// answer file (which sets that password) and the WinRM setup script are written before the first boot.
public struct WindowsAccess: Sendable {
    public var username: String
    public var password: String
    /// True when Kiln chose the password: it only works if the answer file is read, so the image must be generalized.
    public var passwordFromAnswerFile: Bool
    public var answerFile: String
    public var setupScript: String

    public init(username: String, password: String, passwordFromAnswerFile: Bool, answerFile: String, setupScript: String) {
        self.username = username
        self.password = password
        self.passwordFromAnswerFile = passwordFromAnswerFile
        self.answerFile = answerFile
        self.setupScript = setupScript
    }
}

public enum CredentialInjection: String, Sendable, CaseIterable {
    /// cloud-init NoCloud when the image has cloud-init, otherwise offline through libguestfs.
    case auto
    case cloudInit = "cloud-init"
    case offline
}

public struct MachineOptions: Sendable {
    public var runID: String
    public var source: SourceImage
    public var size: VMSize
    /// 0: the source's size. Never shrinks.
    public var osDiskSizeGB: Int
    public var accelerator: Accelerator
    /// Overlay, console log, seed, key: all here.
    public var runDirectory: String
    /// nil: the embedded QEMU driver under the state directory.
    public var libvirtURI: String?
    public var stateDirectory: StateDirectory
    /// nil: a free port on 127.0.0.1.
    public var sshPort: Int?
    public var injection: CredentialInjection
    public var username: String
    /// Where the VM's writable overlay goes; nil: `disk.qcow2` in the run directory. A build that keeps
    /// checkpoints puts it in the next checkpoint's folder, so the snapshot that completes it needs no move.
    public var overlayPath: String?
    /// A Windows guest, reached over WinRM instead of SSH.
    public var windows: WindowsAccess?
    /// What a Linux guest's instance metadata service reports (location, VM size, tags); nil: defaults.
    public var instanceMetadata: InstanceMetadata?
    /// QEMU user networking's `restrict=on`: the guest reaches nothing outside — not the host's loopback services
    /// (through the host address, as Packer's 10.0.2.2), not the network — only what Kiln forwards (SSH in, the
    /// Azure wireserver and IMDS out). User-mode networking cannot block the host alone.
    public var isolateNetwork = false
    /// The VM runs on another libvirt host (`RemoteHost`): disks in its pool, the guest reached through SSH.
    public var remote: RemoteHost?

    public init(runID: String, source: SourceImage, size: VMSize, osDiskSizeGB: Int = 0, accelerator: Accelerator, runDirectory: String,
                libvirtURI: String? = nil, stateDirectory: StateDirectory, sshPort: Int? = nil, injection: CredentialInjection = .auto,
                username: String = "packer", overlayPath: String? = nil, windows: WindowsAccess? = nil) {
        self.runID = runID
        self.source = source
        self.size = size
        self.osDiskSizeGB = osDiskSizeGB
        self.accelerator = accelerator
        self.runDirectory = runDirectory
        self.libvirtURI = libvirtURI
        self.stateDirectory = stateDirectory
        self.sshPort = sshPort
        self.injection = injection
        self.username = username
        self.overlayPath = overlayPath
        self.windows = windows
    }

    public var domainName: String { "kiln-\(runID)" }
}
