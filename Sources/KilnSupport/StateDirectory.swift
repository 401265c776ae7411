import Foundation

/// Where Kiln keeps its state: `--state-dir`, else `KILN_STATE_DIR`, else `$XDG_DATA_HOME/kiln`
/// (`~/.local/share/kiln`). Runs, the embedded libvirt roots and the image store live below it.
public struct StateDirectory: Sendable {
    public let path: String

    public init(explicit: String? = nil, environment: [String: String] = ProcessInfo.processInfo.environment) {
        if let explicit, !explicit.isEmpty {
            path = StateDirectory.absolute(explicit)
        } else if let fromEnvironment = environment["KILN_STATE_DIR"], !fromEnvironment.isEmpty {
            path = StateDirectory.absolute(fromEnvironment)
        } else if let xdg = environment["XDG_DATA_HOME"], !xdg.isEmpty {
            path = StateDirectory.absolute(xdg) + "/kiln"
        } else {
            path = (environment["HOME"] ?? NSHomeDirectory()) + "/.local/share/kiln"
        }
    }

    public var runsPath: String { path + "/runs" }
    public var imagesPath: String { path + "/images" }
    public var cachePath: String { path + "/cache" }

    /// Creates the state directory or a directory below it; each one made here is mode 0700 (runs hold logs,
    /// build keys and disks), from its mkdir on.
    public func create(_ subpath: String = "") throws(KilnError) -> String {
        let target = subpath.isEmpty ? path : path + "/" + subpath
        try PrivateDirectory.createPath(target)
        return target
    }

    static func absolute(_ path: String) -> String {
        path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
    }
}

/// Run IDs: 8 random hex digits, short enough for domain names and paths.
public enum RunID {
    public static func make() -> String {
        String(format: "%08x", UInt32.random(in: 0...UInt32.max))
    }
}

/// Kiln's cache folder outside the repository: `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln` (built source images,
/// libvirt's QEMU capability probes, the accelerator decision of the benchmarks).
public enum KilnCache {
    public static func path(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        (environment["XDG_CACHE_HOME"] ?? ((environment["HOME"] ?? NSHomeDirectory()) + "/.cache")) + "/kiln"
    }
}
