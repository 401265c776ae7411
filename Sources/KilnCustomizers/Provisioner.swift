import KilnSupport
import KilnTemplate

/// One AIB customizer type, as the Packer provisioner AIB runs for it: its downloads, what it fetches before the
/// boot, and how it runs on a Linux guest (SSH, `StepRunner`) and on a Windows guest (WinRM, `WindowsStepRunner`).
/// Each runs against any `GuestSession`, so a stand-in session tests it without a VM.
///
/// A new customizer type is one file with a type conforming to this protocol, plus its case in the template model
/// (`Customizer` in KilnTemplate, and its decoding) and its line in `Customizer.provisioner` below.
protocol Provisioner: Sendable {
    /// The template's `name` for the step, if any.
    var name: String? { get }
    /// The AIB type name (`Shell`, `WindowsRestart`, …).
    var typeName: String { get }
    /// Packer's provisioner name, as AIB's log lines (`(telemetry) Starting provisioner …`) show it.
    var packerName: String { get }
    /// The URIs the step downloads, each with the property that names it and the step's sha256Checksum.
    var downloads: [ProvisionerDownload] { get }

    /// Downloads and verifies what the step needs, before anything boots. Returns the sha256 of what it downloaded.
    func prefetch(_ runner: StepRunner, label: String, index: Int, path: String) async throws -> String?
    /// Runs the step on a Linux guest.
    func run(linux runner: StepRunner, label: String, index: Int, path: String) async throws
    /// Runs the step on a Windows guest.
    func run(windows runner: WindowsStepRunner, label: String, index: Int, path: String) async throws
}

/// A URI a step downloads, the property that names it (`scriptUri`, `sourceUri`) and the step's sha256Checksum.
struct ProvisionerDownload: Sendable, Equatable {
    var uri: String
    var property: String
    var checksum: String?
}

extension Provisioner {
    var downloads: [ProvisionerDownload] { [] }

    func prefetch(_ runner: StepRunner, label: String, index: Int, path: String) async throws -> String? { nil }

    func run(linux runner: StepRunner, label: String, index: Int, path: String) async throws {
        throw StepFailure(message: "\(path) (\(label)): \(typeName) needs a Windows guest; this guest is \(runner.guestOS.rawValue)")
    }

    func run(windows runner: WindowsStepRunner, label: String, index: Int, path: String) async throws {
        throw StepFailure(message: "\(path) (\(label)): \(typeName) customizers need a Linux guest")
    }
}

extension Customizer {
    /// The registration table: the provisioner type that runs each model case (the compiler asks for a line here
    /// when the model gains a case).
    var provisioner: any Provisioner {
        switch self {
        case .shell(let model): ShellProvisioner(model: model)
        case .powerShell(let model): PowerShellProvisioner(model: model)
        case .file(let model): FileProvisioner(model: model)
        case .windowsRestart(let model): WindowsRestartProvisioner(model: model)
        case .windowsUpdate(let model): WindowsUpdateProvisioner(model: model)
        }
    }

    /// The Packer provisioner AIB runs for this customizer, as its log's `(telemetry) Starting provisioner …`
    /// lines name it.
    public var packerProvisioner: String { provisioner.packerName }
}
