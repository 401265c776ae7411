import ArgumentParser
import Foundation
import KilnBuild
import KilnSupport

struct CacheCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cache",
        abstract: "The build cache: a checkpoint of the build VM (memory and disk layer) after boot and after each customizer.",
        discussion: """
        kiln build resumes from the longest chain of checkpoints that matches the template (the source image, the \
        VM profile, and each customizer with the sha256 of what it downloads), so editing customize[6] runs \
        customize[6] onwards only. The cache lives under the state directory's cache/checkpoints and keeps to \
        $KILN_CACHE_MAX_SIZE (default 20G), dropping the least recently used checkpoints first.
        """,
        subcommands: [CacheListCommand.self, CachePruneCommand.self]
    )
}

enum CacheAge {
    static func format(_ seconds: TimeInterval) -> String {
        let value = max(0, seconds)
        if value < 90 { return "\(Int(value))s" }
        if value < 90 * 60 { return "\(Int(value / 60))m" }
        if value < 36 * 3600 { return "\(Int(value / 3600))h" }
        return "\(Int(value / 86400))d"
    }
}
