/// The guest operating system a template targets, as far as the template itself tells.
public enum OSType: String, Sendable, Equatable {
    case linux = "Linux"
    case windows = "Windows"
}

extension ImageTemplate {
    /// What the template says about its guest: Windows-only customizers or a Windows publisher mean Windows; a known
    /// Linux publisher or offer means Linux. Managed and gallery sources tell nothing until they are resolved.
    public var declaredOSType: OSType? {
        if properties.customize.contains(where: \.isWindowsOnly) { return .windows }
        guard case .platformImage(let image) = properties.source else { return nil }
        return PlatformImageOS.osType(publisher: image.publisher, offer: image.offer)
    }
}

public enum PlatformImageOS {
    private static let linuxWords = ["canonical", "ubuntu", "debian", "redhat", "rhel", "centos", "openlogic", "suse",
                                     "sles", "almalinux", "rocky", "oracle-linux", "kinvolk", "flatcar", "linux", "credativ", "mariner"]

    public static func osType(publisher: String, offer: String) -> OSType? {
        let words = (publisher + " " + offer).lowercased()
        if words.contains("windows") { return .windows }
        if linuxWords.contains(where: words.contains) { return .linux }
        return nil
    }
}

/// Rules that depend on the guest's operating system. `kiln validate` applies them when the template tells the OS;
/// a build applies them again once the source is resolved, before anything boots.
public enum GuestRules {
    public static func check(_ loaded: LoadedTemplate, osType: OSType) -> [Diagnostic] {
        var problems: [Diagnostic] = []
        let template = loaded.template
        let steps = Array(zip(loaded.stepPaths.customize, template.properties.customize))
            + Array(zip(loaded.stepPaths.inVMValidations, template.properties.validate?.inVMValidations ?? []))
        for (path, step) in steps {
            switch (step, osType) {
            case (.file(let file), .linux):
                if let problem = linuxFileDestinationProblem(file.destination) {
                    problems.append(Diagnostic(.error, path.appending("destination"), problem))
                }
            case (.windowsRestart, .linux), (.windowsUpdate, .linux):
                problems.append(Diagnostic(.error, path.appending("type"), "expected a customizer for a Linux guest (Shell, PowerShell, File), found \(step.typeName), which needs a Windows guest"))
            case (.shell, .windows):
                problems.append(Diagnostic(.error, path.appending("type"), "expected a customizer for a Windows guest (PowerShell, File, WindowsRestart, WindowsUpdate), found Shell, which needs a Linux guest"))
            default:
                break
            }
        }
        return problems
    }

    /// AIB's rule: on Linux the File customizer writes only under /tmp.
    public static func linuxFileDestinationProblem(_ destination: String) -> String? {
        let components = destination.split(separator: "/")
        let underTmp = destination.hasPrefix("/tmp/") && components.count >= 2 && !components.contains("..")
        return underTmp ? nil : "expected a path under /tmp (AIB's File customizer may write only under /tmp on Linux; move the file in a later Shell step with sudo), found \"\(destination)\""
    }
}

/// Where each customizer and in-VM validation of a template stands in its file.
public struct StepPaths: Sendable, Equatable {
    public var customize: [TemplatePath] = []
    public var inVMValidations: [TemplatePath] = []
}

extension LoadedTemplate {
    /// The name each customizer and in-VM validation has in build logs, by template path: its own name when it has a
    /// non-empty one that no other step of its list repeats (names are optional, may be empty, and may repeat: the
    /// service's own Windows REST example repeats one), else its place and type, `customize[2] Shell`.
    public var stepLabels: [String: String] {
        var labels: [String: String] = [:]
        func label(_ steps: [Customizer], _ paths: [TemplatePath], list: String) {
            var counts: [String: Int] = [:]
            for step in steps { if let name = step.name, !name.isEmpty { counts[name.lowercased(), default: 0] += 1 } }
            for (index, (path, step)) in zip(paths, steps).enumerated() {
                if let name = step.name, !name.isEmpty, counts[name.lowercased()] == 1 {
                    labels[path.description] = name
                } else {
                    let shown = step.name.map { $0.isEmpty ? "" : " \"\($0)\"" } ?? ""
                    labels[path.description] = "\(list)[\(index)] \(step.typeName)\(shown)"
                }
            }
        }
        label(template.properties.customize, stepPaths.customize, list: "customize")
        label(template.properties.validate?.inVMValidations ?? [], stepPaths.inVMValidations, list: "inVMValidations")
        return labels
    }
}
