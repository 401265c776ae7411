import KilnTemplate

/// AIB's Shell customizer, as Packer's shell provisioner runs it (docs/aib-customizers.md): inline lines as one
/// `#!/bin/sh -e` script as the build user; a scriptUri script as root through `sudo -E sh`. Linux guests only.
struct ShellProvisioner: Provisioner {
    let model: ShellCustomizer

    var name: String? { model.name }
    var typeName: String { "Shell" }
    var packerName: String { "shell" }

    var downloads: [ProvisionerDownload] {
        guard case .scriptUri(let uri) = model.script else { return [] }
        return [ProvisionerDownload(uri: uri, property: "scriptUri", checksum: model.sha256Checksum)]
    }

    func prefetch(_ runner: StepRunner, label: String, index: Int, path: String) async throws -> String? {
        guard case .scriptUri(let uri) = model.script else { return nil }
        return try await runner.fetchVerified(uri, checksum: model.sha256Checksum, label: label, path: path + ".scriptUri", name: "script_\(index).sh").sha256
    }

    func run(linux runner: StepRunner, label: String, index: Int, path: String) async throws {
        let script = try await runner.materialize(model.script, checksum: model.sha256Checksum, label: label, path: path, index: index, fileExtension: "sh")
        let elevated: Bool
        if case .scriptUri = model.script { elevated = true } else { elevated = false }
        try await runner.execute(script: script, runner: { StepRunner.shellCommand(remotePath: $0, elevated: elevated) },
                                 validExitCodes: [0], label: label, index: index, path: path)
    }

    func run(windows runner: WindowsStepRunner, label: String, index: Int, path: String) async throws {
        throw StepFailure(message: "\(path) (\(label)): Shell customizers need a Linux guest; use PowerShell on Windows")
    }
}
