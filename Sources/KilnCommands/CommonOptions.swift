import ArgumentParser
import Foundation
import KilnBuild
import KilnLibvirt
import KilnMachine
import KilnSupport

extension AcceleratorChoice: ExpressibleByArgument {}
extension CredentialInjection: ExpressibleByArgument {}

/// Where state lives and how VMs run: shared by every command that boots something.
struct MachineFlags: ParsableArguments {
    @Option(help: "State directory (default: $KILN_STATE_DIR, else $XDG_DATA_HOME/kiln).")
    var stateDir: String?

    @Option(help: "Accelerator: auto probes KVM by booting a kernel and falls back to TCG.")
    var accel: AcceleratorChoice = .auto

    @Option(name: .customLong("connect"), help: ArgumentHelp("A libvirt URI (qemu:///system, qemu+ssh://user@host/system). Default: the embedded QEMU driver, no daemon. kiln build and template run take several qemu+ssh:// hosts and choose one.", valueName: "uri"))
    var connectURIs: [String] = []

    @Option(help: ArgumentHelp("A file of libvirt URIs, one per line (blank lines and # comments skipped): the hosts kiln build and template run choose from, as if each were given with --connect.", valueName: "file"))
    var hosts: String?

    @Option(help: "With a remote --connect: the storage pool on that host that keeps the sources and the builds' disks.")
    var pool = "kiln"

    /// The one libvirt URI of a command that runs on one host (`--connect` given once), nil for the embedded driver.
    var libvirtURI: String? { connectURIs.first }

    mutating func validate() throws {
        if let hosts {
            connectURIs += try Self.readHostsFile(hosts)
            self.hosts = nil  // now in connectURIs, which a background worker is given
        }
        if connectURIs.count > 1, let local = connectURIs.first(where: { LibvirtURI.remoteHost($0) == nil }) {
            throw ValidationError("--connect \(local): several --connect name remote hosts (qemu+ssh://…) to choose from, and \(local) is on this machine")
        }
    }

    /// The URIs of a `--hosts` file: one per line, blank lines and `#` comments skipped.
    static func readHostsFile(_ path: String) throws -> [String] {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ValidationError("--hosts \(path): cannot read it: \(error.localizedDescription)")
        }
        var uris: [String] = []
        for (number, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init)?
                .trimmingCharacters(in: .whitespaces) ?? ""
            guard !line.isEmpty else { continue }
            guard line.contains("://"), !line.contains(where: \.isWhitespace) else {
                throw ValidationError("--hosts \(path) line \(number + 1): expected a libvirt URI such as qemu+ssh://root@lab1/system, found \"\(line)\"")
            }
            uris.append(line)
        }
        guard !uris.isEmpty else {
            throw ValidationError("--hosts \(path): expected at least one libvirt URI, found none")
        }
        return uris
    }

    /// Refuses several `--connect` for a command that does not choose between hosts.
    func requireOneHost(_ command: String) throws(KilnError) {
        if connectURIs.count > 1 {
            throw KilnError(.invalidArgument, "\(command) runs on one host: give --connect once (kiln build and kiln template run choose among several)")
        }
    }

    /// Puts a build on its remote host: the one `--connect` names, or the first of several ranked by `HostChoice`
    /// (fewest Kiln builds running, then most free memory), the others kept for when it cannot start the build.
    /// Leaves the request alone for a libvirt on this machine.
    /// The build is recorded in `HostPlacements` (so builds starting meanwhile count it for its host) until
    /// `BuildCommand.execute` ends.
    func placeRemotely(_ request: inout BuildRequest, notice: @escaping @Sendable (String) -> Void) async throws(KilnError) {
        let hosts: [RemoteHost]
        let runID = request.runID ?? RunID.make()
        let placements = HostPlacements(state: request.state)
        if connectURIs.count > 1 {
            hosts = try await HostChoice.choose(connectURIs, pool: pool, memoryBytes: 2 << 30, placements: placements, runID: runID, notice: notice)
        } else if let uri = libvirtURI, LibvirtURI.remoteHost(uri) != nil {
            hosts = [try RemoteHost(uri: uri, pool: pool)]
            try placements.record(runID: runID, uri: uri)
        } else {
            return
        }
        request.runID = runID
        request.remote = hosts.first
        request.fallbackHosts = Array(hosts.dropFirst())
        request.libvirtURI = hosts.first?.uri
    }

    var state: StateDirectory { StateDirectory(explicit: stateDir) }
}

/// Prints progress lines on standard error, prefixed with the elapsed time.
final class ConsoleEvents: Sendable {
    let quiet: Bool
    let start = ContinuousClock.now

    init(quiet: Bool) { self.quiet = quiet }

    func callAsFunction(_ message: String) {
        guard !quiet else { return }
        let elapsed = ContinuousClock.now - start
        printError(String(format: "[%6.1fs] ", elapsed.inSeconds) + message)
    }
}

/// Runs `body` in a task that SIGINT, SIGTERM and SIGHUP (a closed terminal or SSH session) cancel, so that
/// teardown code runs before the process exits.
/// The signal sources are made once per process: libdispatch installs its handler for a signal once, so a second
/// `signal(SIG_IGN)` and source (a build, then the wait while a kept VM lives) would leave the signal ignored.
enum Interruptible {
    private static let target = Locked<(@Sendable (Int32) -> Void)?>(nil)

    nonisolated(unsafe) private static let sources: [DispatchSourceSignal] = [SIGINT, SIGTERM, SIGHUP].map { number in
        signal(number, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
        source.setEventHandler { Interruptible.target.current?(number) }
        source.resume()
        return source
    }

    static func run<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
        _ = sources
        let task = Task { try await body() }
        target.withLock {
            $0 = { number in
                printError("kiln: \(number == SIGINT ? "interrupted" : number == SIGHUP ? "hung up" : "terminated"); tearing down")
                task.cancel()
            }
        }
        defer { target.withLock { $0 = nil } }
        return try await task.value
    }
}

/// Reports a KilnError and exits with failure.
func fail(_ error: KilnError) -> ExitCode {
    printError("kiln: error: \(error)")
    return ExitCode.failure
}
