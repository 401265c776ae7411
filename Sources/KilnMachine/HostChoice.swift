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

    /// The candidate a build goes to first.
    public static func pick(_ candidates: [Candidate]) -> Candidate? { rank(candidates).first }

    /// Asks each host and ranks those that can take the build: the first is the build's host, the others are where
    /// it goes if that one cannot start it. `notice` hears every host skipped and the choice.
    public static func choose(_ uris: [String], pool: String, memoryBytes: UInt64,
                              notice: @escaping @Sendable (String) -> Void) async throws(KilnError) -> [RemoteHost] {
        var candidates: [Candidate] = []
        var skipped: [String] = []
        for uri in uris {
            let remote = try RemoteHost(uri: uri, pool: pool)
            let reason: String?
            do {
                let candidate = try await ask(remote)
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
        notice("host \(hosts[0].label) chosen: \(chosen.runningBuilds) Kiln build(s) running there, \(ByteSize.format(chosen.freeMemoryBytes)) free"
               + (candidates.count > 1 ? " (of \(candidates.count) that could take it; then " + hosts.dropFirst().map(\.label).joined(separator: ", ") + ")" : ""))
        return hosts
    }

    static func ask(_ remote: RemoteHost) async throws(KilnError) -> Candidate {
        try await LibvirtConnection.with(remote.uri) { connection throws(KilnError) in
            let facts = try await connection.hostFacts()
            let running = try await connection.runningDomainNames().filter { $0.hasPrefix("kiln-") }.count
            _ = try await connection.storagePool(named: remote.pool)
            return Candidate(uri: remote.uri, freeMemoryBytes: facts.freeMemoryBytes, runningBuilds: running)
        }
    }
}
