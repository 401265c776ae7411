import ArgumentParser
import Foundation
import KilnBuild
import KilnMachine
import KilnSupport

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
            print("removed \(entry.shortKey) \(entry.templateName) \(entry.stepDescription)" + (entry.machine.remote.map { " (and its volumes in pool \($0.pool) of \($0.uri))" } ?? ""))
        }
        await RemoteCheckpointFiles.delete(removal.removed.map(\.machine)) { printError("kiln: \($0)") }
        for entry in removal.inUse {
            print("kept \(entry.shortKey) \(entry.templateName) \(entry.stepDescription): a running build uses it")
        }
        print("removed \(removal.removed.count) checkpoint(s), freed \(ByteSize.format(removal.freedBytes))")
    }
}
