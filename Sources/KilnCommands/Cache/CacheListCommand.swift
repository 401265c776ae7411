import ArgumentParser
import Foundation
import KilnBuild
import KilnSupport

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
