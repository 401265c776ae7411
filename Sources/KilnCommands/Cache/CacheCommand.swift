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

struct CacheListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the checkpoints: template, step, size, age, last use.")

    @OptionGroup var stateFlags: StateFlags

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        let cache = CheckpointCache(state: stateFlags.state)
        let entries = cache.entries()
        if json {
            struct Row: Encodable {
                var key, folder, template, step, runID: String
                var customizerIndex: Int?
                var parentKey: String?
                var sizeBytes: UInt64
                var createdAt, lastUsedAt: Date
            }
            let rows = entries.map {
                Row(key: $0.key, folder: $0.machine.directory, template: $0.templateName, step: $0.stepDescription, runID: $0.runID,
                    customizerIndex: $0.step, parentKey: $0.parentKey, sizeBytes: cache.sizeBytes($0), createdAt: $0.createdAt,
                    lastUsedAt: $0.lastUsedAt)
            }
            try printJSON(rows)
            return
        }
        guard !entries.isEmpty else {
            print("the build cache is empty (\(cache.directory))")
            return
        }
        let now = Date()
        var total: UInt64 = 0
        let table = entries.map { entry -> [String] in
            let size = cache.sizeBytes(entry)
            total += size
            return [entry.shortKey, entry.templateName, entry.stepDescription, ByteSize.format(size),
                    CacheAge.format(now.timeIntervalSince(entry.createdAt)), CacheAge.format(now.timeIntervalSince(entry.lastUsedAt)), entry.runID]
        }
        printTable([["KEY", "TEMPLATE", "STEP", "SIZE", "AGE", "LAST USED", "RUN"]] + table)
        print("\(entries.count) checkpoint(s), \(ByteSize.format(total)) in \(cache.directory) (limit \(ByteSize.format(CheckpointCache.defaultLimitBytes())))")
    }
}

struct CachePruneCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune",
        abstract: "Remove checkpoints: unused for a while, past a size, or all. Checkpoints a running build uses stay.",
        discussion: "With no option, the cache is brought within $KILN_CACHE_MAX_SIZE (default 20G). Removing a checkpoint removes the ones built on it."
    )

    @OptionGroup var stateFlags: StateFlags

    @Option(help: "Remove checkpoints not used for this long (7d, 12h, 30m).")
    var olderThan: String?

    @Option(help: "Then remove the least recently used until the cache fits (20G, 500M).")
    var maxSize: String?

    @Flag(help: "Remove every checkpoint.")
    var all = false

    func validate() throws {
        if let olderThan, AgeText.parse(olderThan) == nil {
            throw ValidationError("--older-than expects an age such as 7d, 12h or 30m, found \"\(olderThan)\"")
        }
        if let maxSize, ByteSize.parse(maxSize) == nil {
            throw ValidationError("--max-size expects a size such as 20G or 500M, found \"\(maxSize)\"")
        }
    }

    func run() async throws {
        let cache = CheckpointCache(state: stateFlags.state)
        let limit: UInt64? = all ? 0 : (maxSize.flatMap(ByteSize.parse) ?? (olderThan == nil ? CheckpointCache.defaultLimitBytes() : nil))
        let removal = cache.prune(olderThan: olderThan.flatMap(AgeText.parse), maxBytes: limit)
        for entry in removal.removed {
            print("removed \(entry.shortKey) \(entry.templateName) \(entry.stepDescription)")
        }
        for entry in removal.inUse {
            print("kept \(entry.shortKey) \(entry.templateName) \(entry.stepDescription): a running build uses it")
        }
        print("removed \(removal.removed.count) checkpoint(s), freed \(ByteSize.format(removal.freedBytes))")
    }
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
