import ArgumentParser
import Foundation
import KilnBuild
import KilnMachine
import KilnStore
import KilnSupport
import KilnTemplate

extension ErrorAction: ExpressibleByArgument {}

struct BuildCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "Run an image template end to end: boot, customize, deprovision, distribute.",
        discussion: """
        The run's directory (under the state directory's runs/) keeps run.json (runState, runSubState, times, \
        message, runOutputs), customization.log and the outputs. Exit status 0 when the run Succeeded, 1 otherwise.
        """
    )

    @Argument(help: "The template JSON file (an imageTemplates resource or an ARM deployment template); with --resume, the run's template by default.")
    var template: String?

    @Option(help: "Continue a failed or kept run from its last checkpoint that still matches the (fixed) template; a VM the run kept is stopped first.")
    var resume: String?

    @Option(help: "Which image template, when an ARM template holds several.")
    var name: String?

    @Flag(help: "Print the build's plan (source, VM, accelerator, each step with its template path, downloads and checkpoint key) and stop: nothing is booted, fetched or built.")
    var plan = false

    @OptionGroup var parameterOptions: ParameterOptions

    @OptionGroup var machine: MachineFlags

    @OptionGroup var runOptions: BuildRunOptions

    func validate() throws {
        guard template != nil || resume != nil else { throw ValidationError("expected a template file, or --resume RUN") }
    }

    func run() async throws {
        let state = machine.state
        var templatePath = template ?? ""
        if let resume {
            let runDirectory = state.runsPath + "/" + resume
            guard let record = RunRecord.read(from: runDirectory + "/run.json") else {
                throw fail(KilnError(.notFound, "--resume: expected a run \(resume) in \(state.runsPath), found none"))
            }
            if template == nil { templatePath = record.templatePath }
            if !plan, let kept = KeptVM.read(runDirectory: runDirectory), kept.isAlive {
                printError("kiln: stopping the VM run \(resume) kept")
                do { try await kept.stop(state: state) } catch { throw fail(error) }
            }
        }
        var request = BuildRequest(templatePath: templatePath, name: name, parameters: parameterOptions.parameters,
                                   inputs: try parameterOptions.inputs(), state: machine.state,
                                   accelerator: machine.accel, libvirtURI: machine.libvirtURI, onError: runOptions.onError,
                                   sshTimeout: runOptions.sshTimeoutDuration, useCache: !runOptions.noCache,
                                   writeCheckpoints: !runOptions.noCheckpoints, resumeRun: resume, offline: runOptions.offline, force: runOptions.force)
        request.isolateNetwork = runOptions.isolateNetwork
        do { try await machine.placeRemotely(&request) { printError("kiln: \($0)") } } catch { throw fail(error) }
        if plan {
            // Printing a plan runs nothing: the host it names is not taken.
            Self.releasePlacement(of: request)
            do {
                Swift.print(try await BuildPlanner.plan(request).text)
            } catch {
                throw fail(error)
            }
            return
        }
        let record = try await Self.execute(request, printer: runOptions.printer)
        if record.runState != .succeeded { throw ExitCode.failure }
    }

    /// Runs one build in this process, Ctrl-C and SIGTERM cancelling it; keeps the process (and so the embedded
    /// driver's VM) alive while an errorHandling-abort VM is kept.
    /// The build no longer counts for the remote host `MachineFlags.placeRemotely` placed it on.
    static func releasePlacement(of request: BuildRequest) {
        if request.remote != nil, let runID = request.runID { HostPlacements(state: request.state).remove(runID: runID) }
    }

    static func execute(_ request: BuildRequest, printer: BuildPrinter) async throws -> RunRecord {
        let engine = BuildEngine(request) { printer.print($0) }
        // Once the build ended, it no longer counts for its host (HostPlacements); a VM it kept counts as a running
        // `kiln-` domain there.
        let result: BuildResult
        do {
            result = try await Interruptible.run { await engine.run() }
        } catch {
            Self.releasePlacement(of: request)
            throw error
        }
        Self.releasePlacement(of: request)
        if let kept = result.keptVM {
            printError("kiln: the build VM is kept for inspection (on-error abort). Reach it with:\n  kiln vm ssh \(kept.runID)\n  \(kept.sshCommand)\nPress Ctrl-C (or run kiln vm stop \(kept.runID)) to tear it down; kiln build --resume \(kept.runID) continues from its last checkpoint.")
            // The embedded driver lives in this process: keep it alive until the user is done.
            _ = try? await Interruptible.run { () async throws -> Void in
                while true { try await Task.sleep(for: .seconds(3600)) }
            }
            await engine.releaseKeptVM()
        }
        return result.record
    }
}

/// How a build runs: shared by `kiln build` and `kiln template run`.
struct BuildRunOptions: ParsableArguments {
    @Option(help: "On a customizer or validation failure: cleanup (default) or abort (keep the VM for inspection).")
    var onError: ErrorAction?

    @Option(help: "How long to wait for SSH after boot and after restarts.")
    var sshTimeout = "20m"

    @Flag(help: "Ignore the build cache: boot and run every customizer (checkpoints are still written).")
    var noCache = false

    @Flag(help: "Write no checkpoints (after boot and after each customizer) into the build cache.")
    var noCheckpoints = false

    @Flag(help: "Touch no network: downloads come from the download cache (kiln fetch), and an unbuilt catalog image is an error.")
    var offline = false

    @Flag(help: "Let a VHD target whose uri names an existing file replace it (refused otherwise, before the boot).")
    var force = false

    @Flag(help: "Give the Linux guest no way out (QEMU restrict=on): not the host's loopback services, not the network; only Kiln's own forwards.")
    var isolateNetwork = false

    @Flag(help: "Print only the result.")
    var quiet = false

    @Flag(help: "Print one JSON object per line: phases, customizer start/end, output, result.")
    var json = false

    func validate() throws {
        guard DurationText.parse(sshTimeout) != nil else { throw ValidationError("--ssh-timeout expects a duration such as 20m, found \"\(sshTimeout)\"") }
    }

    /// The flags a background worker (`template run --no-wait`) must be given to build the same way.
    var forwardedArguments: [String] {
        ["--ssh-timeout", sshTimeout] + (onError.map { ["--on-error", $0.rawValue] } ?? [])
            + (noCache ? ["--no-cache"] : []) + (noCheckpoints ? ["--no-checkpoints"] : []) + (offline ? ["--offline"] : [])
            + (force ? ["--force"] : []) + (isolateNetwork ? ["--isolate-network"] : [])
    }

    var printer: BuildPrinter { BuildPrinter(mode: json ? .json : (quiet ? .quiet : .human)) }
    var sshTimeoutDuration: Duration { DurationText.parse(sshTimeout) ?? .seconds(1200) }
}

/// Prints build events for people (one line each, with the customizer's name and elapsed time) or as JSON lines.
final class BuildPrinter: Sendable {
    enum Mode { case human, quiet, json }
    let mode: Mode
    let start = ContinuousClock.now
    init(mode: Mode) { self.mode = mode }

    func print(_ event: BuildEvent) {
        switch mode {
        case .json:
            if let data = try? JSONSerialization.data(withJSONObject: event.json, options: [.sortedKeys]) {
                // Events come from several threads: LineWriter keeps each JSON line whole.
                LineWriter.standardOutput.write(bytes: Array(data) + [0x0A])
            }
        case .quiet:
            if case .finished(let record) = event { summary(record) }
        case .human:
            let elapsed = ContinuousClock.now - start
            let stamp = String(format: "[%6.1fs]", elapsed.inSeconds)
            switch event {
            case .phase(let subState, let name): printError("\(stamp) == \(name) (\(subState.rawValue))")
            case .message(let text): printError("\(stamp) \(text)")
            case .warning(let text): printError("\(stamp) warning: \(text)")
            case .customizerStarted(let index, let name, let type): printError("\(stamp) --> [\(index)] \(name) (\(type))")
            case .output(let customizer, _, let line): printError("\(stamp)     \(customizer): \(line)")
            case .customizerFinished(let index, let name, let seconds, let outcome):
                printError("\(stamp) <-- [\(index)] \(name) \(outcome) in \(String(format: "%.1f", seconds))s")
            case .finished(let record): summary(record)
            }
        }
    }

    private func summary(_ record: RunRecord) {
        Swift.print("runState: \(record.runState.rawValue) (\(record.runSubState.rawValue))")
        Swift.print("message: \(record.message)")
        for phase in record.phases {
            Swift.print("  " + phase.name.padding(toLength: 15, withPad: " ", startingAt: 0) + String(format: " %7.1fs", phase.seconds))
        }
        for output in record.runOutputs {
            Swift.print("  output \(output.runOutputName) (\(output.type)): \(output.provisioningState) \(output.path ?? output.error ?? "")")
        }
        Swift.print("run: \(record.runID)" + (record.host.map { " (on \($0))" } ?? ""))
    }
}
