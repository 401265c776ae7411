import Foundation
import KilnMachine
import KilnTemplate

/// Everything a build decides before its VM boots, as a value: the resolved source, the VM, the accelerator, and
/// one `PlannedStep` per customizer and in-VM validation with its template path, downloads and checkpoint key.
/// `kiln build --plan` prints it; tests check it without a VM.
public struct BuildPlan: Sendable {
    /// A URI a step downloads, with the template path of the property that names it.
    public struct Download: Sendable, Equatable {
        public var path: String
        public var uri: String
        public var sha256Checksum: String?
    }

    public struct PlannedStep: Sendable {
        /// The step's number in logs and events: customizers from 0, validations after them.
        public var index: Int
        /// Its template path (`properties.customize[2]`).
        public var path: String
        public var label: String
        public var customizer: Customizer
        public var downloads: [Download]
        /// The checkpoint taken after this step; nil after a validation, on a Windows guest, and in a plan made
        /// before the downloads it hashes were fetched.
        public var checkpointKey: String?
    }

    public var templateName: String
    public var templatePath: String
    public var source: SourceImage
    public var guestOS: OSType
    public var size: VMSize
    /// 0: the source's size.
    public var osDiskSizeGB: Int
    /// nil in a printed plan when `--accel auto` has no answer cached for this host boot yet (the build probes).
    public var accelerator: AcceleratorDecision?
    /// The build user Kiln provisions (Linux).
    public var username: String
    /// What a Linux guest's instance metadata service reports: AIB's build VM in the template's location.
    public var instanceMetadata: InstanceMetadata?
    public var customize: [PlannedStep]
    public var validations: [PlannedStep]
    public var sourceValidationOnly: Bool
    /// The checkpoint taken after boot; nil when the build takes none (see `noCheckpointsReason`) or it is not known yet.
    public var bootKey: String?
    /// Why the build reads and writes no checkpoints; nil when it does.
    public var noCheckpointsReason: String?
    /// The remote host and pool that keep the checkpoints' volumes (part of their keys); nil on this machine.
    public var checkpointHost: String?
    public var distribute: [Distributor]
    /// Secure parameter values: the printed plan masks them (a SAS token in a scriptUri, say).
    var secrets: [String] = []

    /// Every step's checkpoint key, boot first: the chain a resume looks up.
    var checkpointKeys: [String]? {
        guard let bootKey else { return nil }
        var keys = [bootKey]
        for step in customize {
            guard let key = step.checkpointKey else { return nil }
            keys.append(key)
        }
        return keys
    }

    /// The plan as `kiln build --plan` prints it.
    public var text: String {
        func short(_ key: String?) -> String { key.map { String($0.prefix(12)) } ?? "known after fetch" }
        var lines = ["plan for \(templateName) (\(templatePath))"]
        lines.append("source: \(source.displayName) (\(source.path), \(source.format), \(source.firmware.rawValue))")
        lines.append("guest: \(guestOS.rawValue)")
        lines.append("vm: \(size.name) (\(size.vCPUs) vCPU, \(size.memoryMiB) MiB), os disk " + (osDiskSizeGB == 0 ? "as the source" : "\(osDiskSizeGB) GB"))
        lines.append("accelerator: " + (accelerator.map { "\($0.accelerator.rawValue) (\($0.evidence))" } ?? "decided by a probe at build time"))
        if let noCheckpointsReason {
            lines.append("checkpoints: none (\(noCheckpointsReason))")
        } else {
            lines.append("checkpoints: after boot \(accelerator == nil ? "known once the accelerator is decided" : short(bootKey)), then after each customizer")
        }
        func add(_ title: String, _ steps: [PlannedStep], checkpoints: Bool) {
            guard !steps.isEmpty else { return }
            lines.append(title)
            for step in steps {
                lines.append("  [\(step.index)] \(step.label) (\(step.customizer.typeName)) \(step.path)")
                for download in step.downloads {
                    lines.append("      download \(download.uri) (\(download.path)), sha256 " + (download.sha256Checksum?.lowercased() ?? "not pinned"))
                }
                if checkpoints, noCheckpointsReason == nil {
                    lines.append("      checkpoint " + (bootKey == nil ? "known once the accelerator is decided" : short(step.checkpointKey)))
                }
            }
        }
        add("customize:", customize, checkpoints: true)
        add("validate:", validations, checkpoints: false)
        if sourceValidationOnly { lines.append("sourceValidationOnly: the customizers are skipped and nothing is distributed") }
        lines.append(sourceValidationOnly || distribute.isEmpty ? "distribute: nothing" : "distribute:")
        if !sourceValidationOnly {
            for (index, target) in distribute.enumerated() {
                var line = "  [\(index)] \(target.typeName) \(target.runOutputName)"
                if case .vhd(let vhd) = target.target { line += vhd.uri.map { " → \($0)" } ?? " → the run directory" }
                lines.append(line)
            }
        }
        lines.append("nothing was booted")
        let mask = SecretMask()
        mask.set(secrets)
        return mask.mask(lines.joined(separator: "\n"))
    }
}
