import Foundation
import KilnLibvirt
import KilnSupport

/// One build host out of several (`--connect` given more than once): each is asked, through its own connection, for
/// its free memory and the Kiln builds running on it (domains named `kiln-…`); the build goes to the one with the
/// fewest builds running, then the most free memory. A host that does not answer, has no pool of that name, or has
/// less free memory than the build VM needs is skipped with a notice; only when every host is skipped does the
/// build fail, naming each host and why. A host chosen that then cannot start the build (its pool too full for the
/// source, its QEMU refusing the domain) passes the build to the next one (`LinuxBootStep`).
public enum HostChoice {
    public struct Candidate: Sendable, Equatable {
        public var uri: String
        public var freeMemoryBytes: UInt64
        public var runningBuilds: Int

        public init(uri: String, freeMemoryBytes: UInt64, runningBuilds: Int) {
            self.uri = uri
            self.freeMemoryBytes = freeMemoryBytes
            self.runningBuilds = runningBuilds
        }
    }

    /// The candidates in the order a build tries them: fewest running builds, then most free memory, then the order
    /// given.
    public static func rank(_ candidates: [Candidate]) -> [Candidate] {
        candidates.enumerated().sorted { a, b in
            (a.element.runningBuilds, UInt64.max - a.element.freeMemoryBytes, a.offset)
                < (b.element.runningBuilds, UInt64.max - b.element.freeMemoryBytes, b.offset)
        }.map(\.element)
    }

    /// Asks each host and ranks those that can take the build: the first is the build's host, the others are where
    /// it goes if that one cannot start it. The builds this controller placed (`placements`) and that have not ended
    /// count for their host even before their domain runs there, and this build (`runID`) is recorded on the first
    /// host, all under the placements' lock. `notice` hears every host skipped and the choice.
    public static func choose(_ uris: [String], pool: String, memoryBytes: UInt64, placements: HostPlacements, runID: String,
                              notice: @escaping @Sendable (String) -> Void) async throws(KilnError) -> [RemoteHost] {
        try await placements.locked { () throws(KilnError) -> [RemoteHost] in
            let placed = placements.live().mapValues { $0.filter { $0 != runID } }
            let hosts = try await rankHosts(uris, pool: pool, memoryBytes: memoryBytes, placed: placed, notice: notice)
            try placements.record(runID: runID, uri: hosts[0].uri)
            return hosts
        }
    }

    private static func rankHosts(_ uris: [String], pool: String, memoryBytes: UInt64, placed: [String: [String]],
                                  notice: @escaping @Sendable (String) -> Void) async throws(KilnError) -> [RemoteHost] {
        var candidates: [Candidate] = []
        var skipped: [String] = []
        for uri in uris {
            let remote = try RemoteHost(uri: uri, pool: pool)
            let reason: String?
            do {
                let candidate = try await ask(remote, placedRuns: placed[uri] ?? [])
                if candidate.freeMemoryBytes < memoryBytes {
                    reason = "\(ByteSize.format(candidate.freeMemoryBytes)) free, the build VM needs \(ByteSize.format(memoryBytes))"
                } else {
                    candidates.append(candidate)
                    reason = nil
                }
            } catch {
                reason = error.message
            }
            if let reason {
                skipped.append("\(remote.label): \(reason)")
                notice("host \(remote.label) skipped: \(reason)")
            }
        }
        let ranked = rank(candidates)
        guard let chosen = ranked.first else {
            throw KilnError(.external, "no build host could take the build: " + skipped.joined(separator: "; "))
        }
        let hosts = try ranked.map { candidate throws(KilnError) in try RemoteHost(uri: candidate.uri, pool: pool) }
        let others = zip(hosts, ranked).dropFirst().map { host, candidate in
            "\(host.label) with \(candidate.runningBuilds) build(s), \(ByteSize.format(candidate.freeMemoryBytes)) free"
        }
        notice("host \(hosts[0].label) chosen: \(chosen.runningBuilds) Kiln build(s) running there, \(ByteSize.format(chosen.freeMemoryBytes)) free"
               + (others.isEmpty ? "" : " (of \(candidates.count) that could take it; then " + others.joined(separator: "; ") + ")"))
        return hosts
    }

    /// The Kiln builds on a host: its running `kiln-…` domains, and the runs this controller placed there whose
    /// domains are not running yet (a placed run's domain is `kiln-<runID>`; a guest resumed from a checkpoint
    /// keeps the name of the run that booted it, and then counts twice).
    public static func runningBuilds(domains: [String], placedRuns: [String]) -> Int {
        Set(domains.filter { $0.hasPrefix("kiln-") }).union(placedRuns.map { "kiln-\($0)" }).count
    }

    static func ask(_ remote: RemoteHost, placedRuns: [String]) async throws(KilnError) -> Candidate {
        try await LibvirtConnection.with(remote.uri) { connection throws(KilnError) in
            let facts = try await connection.hostFacts()
            let running = runningBuilds(domains: try await connection.runningDomainNames(), placedRuns: placedRuns)
            _ = try await connection.storagePool(named: remote.pool)
            return Candidate(uri: remote.uri, freeMemoryBytes: facts.freeMemoryBytes, runningBuilds: running)
        }
    }
}
