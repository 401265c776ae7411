import ArgumentParser
import Foundation
import KilnBuild
import KilnMachine
import KilnStore
import KilnSupport
import KilnTemplate

struct TemplateRunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Build a created template.",
        discussion: """
        In the foreground like kiln build, or with --no-wait in a background process that outlives the terminal: \
        follow it with `kiln template logs NAME --follow`, stop it with `kiln template cancel NAME`. Several names \
        with --no-wait start one background build each, one after the other; with several hosts (--connect, \
        --hosts) each goes to the host with the fewest Kiln builds, counting the ones just started.
        """
    )

    @Argument(help: "The template's name (several with --no-wait).")
    var names: [String]

    @Flag(help: "Start the build in the background and return once it is running.")
    var noWait = false

    @Option(help: ArgumentHelp("The run's ID (set by --no-wait for the background process).", visibility: .hidden))
    var runID: String?

    @OptionGroup var machine: MachineFlags
    @OptionGroup var runOptions: BuildRunOptions

    func validate() throws {
        if names.isEmpty { throw ValidationError("expected the name of a created template (kiln template list shows them)") }
        if names.count > 1 && !noWait {
            throw ValidationError("several templates (\(names.joined(separator: ", "))) run in the background only: add --no-wait")
        }
        if names.count > 1 && runID != nil { throw ValidationError("--run-id names the run of one template") }
    }

    func run() async throws {
        let state = machine.state
        let store: StateStore
        do { store = try StateStore.open(state) } catch { throw fail(error) }
        if noWait {
            // One after the other: each background build is placed on its host before the next one chooses.
            var failed = 0
            for name in names {
                do {
                    let row = try requireTemplate(name, in: store)
                    try refuseSecondRun(row, store: store)
                    try startInBackground(row, state: state, store: store)
                } catch {
                    failed += 1
                }
            }
            if failed > 0 { throw ExitCode.failure }
            return
        }
        let row = try requireTemplate(names[0], in: store)
        try refuseSecondRun(row, store: store)
        var request = BuildRequest(templatePath: row.storedPath, name: row.resourceName, parameters: row.parameterValues, state: state,
                                   accelerator: machine.accel, libvirtURI: machine.libvirtURI, onError: runOptions.onError,
                                   sshTimeout: runOptions.sshTimeoutDuration, createdTemplateName: row.name, runID: runID,
                                   useCache: !runOptions.noCache, writeCheckpoints: !runOptions.noCheckpoints, offline: runOptions.offline, force: runOptions.force)
        request.isolateNetwork = runOptions.isolateNetwork
        do { try await machine.placeRemotely(&request) { printError("kiln: \($0)") } } catch { throw fail(error) }
        let record = try await BuildCommand.execute(request, printer: runOptions.printer)
        if record.runState != .succeeded { throw ExitCode.failure }
    }

    private func refuseSecondRun(_ row: TemplateRow, store: StateStore) throws {
        if let active = (try? store.runs(template: row.name))?.first(where: \.isActive), active.record.runID != runID {
            throw fail(KilnError(.invalidState, "template \(row.name) already has a run in progress (\(active.record.runID), \(active.record.runSubState.rawValue)); wait for it or cancel it with kiln template cancel \(row.name)"))
        }
    }

    private func startInBackground(_ row: TemplateRow, state: StateDirectory, store: StateStore) throws {
        let runID = RunID.make()
        let runDirectory = state.runsPath + "/" + runID
        let logPath = runDirectory + "/worker.log"
        var arguments = ["template", "run", row.name, "--run-id", runID, "--state-dir", state.path, "--accel", machine.accel.rawValue]
            + runOptions.forwardedArguments
        for uri in machine.connectURIs { arguments += ["--connect", uri] }
        if !machine.connectURIs.isEmpty { arguments += ["--pool", machine.pool] }
        let pid: pid_t
        do {
            try PrivateDirectory.createPath(runDirectory)
            let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
            pid = try DetachedProcess.spawn(executable, arguments, logPath: logPath)
        } catch {
            throw fail(error)
        }
        // Return once the run is recorded (so show, logs and cancel see it), or report why it never was.
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            if (try? store.run(id: runID)) != nil {
                print("started run \(runID) of template \(row.name) in the background (pid \(pid))")
                print("follow it with: kiln template logs \(row.name) --follow")
                return
            }
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                let output = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
                try? FileManager.default.removeItem(atPath: runDirectory)
                throw fail(KilnError(.external, "the background build of \(row.name) ended before it started:\n\(output.suffix(2000))"))
            }
            Thread.sleep(forTimeInterval: 0.2)
        }
        throw fail(KilnError(.timeout, "the background build of \(row.name) (pid \(pid)) did not record its run within 60s; see \(logPath)"))
    }
}
