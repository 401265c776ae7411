import Foundation
import KilnSupport
import KilnTemplate

/// AIB's File customizer, as Packer's file provisioner runs it: the file is fetched (and its checksum checked)
/// before the boot, then uploaded to a directory that must exist in the guest (AIB does not create it). On Linux
/// the destination must be under /tmp (GuestRules).
struct FileProvisioner: Provisioner {
    let model: FileCustomizer

    var name: String? { model.name }
    var typeName: String { "File" }
    var packerName: String { "file" }

    var downloads: [ProvisionerDownload] {
        [ProvisionerDownload(uri: model.sourceUri, property: "sourceUri", checksum: model.sha256Checksum)]
    }

    func prefetch(_ runner: StepRunner, label: String, index: Int, path: String) async throws -> String? {
        if runner.guestOS == .linux, let problem = GuestRules.linuxFileDestinationProblem(model.destination) {
            throw StepFailure(message: "\(path).destination (\(label)): \(problem)")
        }
        let fetched = try await runner.fetchVerified(model.sourceUri, checksum: model.sha256Checksum, label: label, path: path + ".sourceUri", name: "file_\(index)")
        if fetched.sizeBytes > 20 * 1024 * 1024 {
            let warning = "\(label): \(model.sourceUri) is \(fetched.sizeBytes / (1024 * 1024)) MB; AIB recommends File customizer files under 20 MB"
            runner.log.write(label, "warning: " + warning)
            runner.events(.warning(warning))
        }
        return fetched.sha256
    }

    func run(linux runner: StepRunner, label: String, index: Int, path: String) async throws {
        let local = runner.downloads + "/file_\(index)"
        if !FileManager.default.fileExists(atPath: local) {
            _ = try await prefetch(runner, label: label, index: index, path: path)
        }
        let directory = (model.destination as NSString).deletingLastPathComponent
        let exists = try await runner.session.exec("test -d \(ShellQuote.quote(directory.isEmpty ? "/" : directory))")
        guard exists.succeeded else {
            throw StepFailure(message: "\(path).destination (\(label)): expected the directory \(directory) to exist in the guest (AIB does not create it), found none")
        }
        runner.log.write(label, "uploading \(model.sourceUri) to \(model.destination)")
        try await runner.session.upload(localPath: local, remotePath: model.destination)
        runner.log.write(label, "uploaded to \(model.destination)")
    }

    func run(windows runner: WindowsStepRunner, label: String, index: Int, path: String) async throws {
        let local = runner.downloads + "/file_\(index)"
        if !FileManager.default.fileExists(atPath: local) {
            _ = try await prefetch(runner.fetcher, label: label, index: index, path: path)
        }
        let directory = WindowsStepRunner.parentDirectory(model.destination)
        let exists = try await runner.session.exec(PowerShell.commandLine(
            "if (Test-Path -LiteralPath \(PowerShell.quote(directory)) -PathType Container) { exit 0 } else { exit 1 }"))
        guard exists.succeeded else {
            throw StepFailure(message: "\(path).destination (\(label)): expected the directory \(directory) to exist in the guest (AIB does not create it), found none")
        }
        runner.log.write(label, "uploading \(model.sourceUri) to \(model.destination)")
        try await runner.uploadChecked(local, to: model.destination, label: label, path: path)
        runner.log.write(label, "uploaded to \(model.destination) (sha256 checked in the guest)")
    }
}
