import ArgumentParser
import Foundation
import KilnBuild
import KilnMachine
import KilnStore
import KilnSupport
import KilnTemplate

struct TemplateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "template",
        abstract: "Image templates kept in local state, as `az image builder` manages them in Azure.",
        discussion: """
        create stores a copy of the template; run builds it (in the foreground, or in the background with --no-wait); \
        cancel, show, list, logs and output follow runs; delete removes the template and its staging outputs. \
        `kiln build` is the one-shot form.
        """,
        subcommands: [TemplateCreateCommand.self, TemplateRunCommand.self, TemplateCancelCommand.self, TemplateShowCommand.self,
                      TemplateListCommand.self, TemplateDeleteCommand.self, TemplateLogsCommand.self, TemplateOutputCommand.self]
    )
}

/// `--state-dir` for commands that only read or change local state.
struct StateFlags: ParsableArguments {
    @Option(help: "State directory (default: $KILN_STATE_DIR, else $XDG_DATA_HOME/kiln).")
    var stateDir: String?

    var state: StateDirectory { StateDirectory(explicit: stateDir) }

    func open() throws -> StateStore {
        do { return try StateStore.open(state) } catch { throw fail(error) }
    }
}

func requireTemplate(_ name: String, in store: StateStore) throws -> TemplateRow {
    do throws(KilnError) {
        guard let row = try store.template(named: name) else {
            let known = (try? store.templates().map(\.name)) ?? []
            throw KilnError(.notFound, "expected an image template named \(name), found none" + (known.isEmpty ? "; create one with kiln template create \(name) TEMPLATE.json" : " (known: \(known.joined(separator: ", ")))"))
        }
        return row
    } catch {
        throw fail(error)
    }
}

struct TemplateCreateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Validate a template and store a copy of it under NAME.",
        discussion: "Later edits of the file change nothing until the template is deleted and created again, as with AIB."
    )

    @Argument(help: "The template's name (letters, digits, '-', '_', '.'; at most 64).")
    var name: String

    @Argument(help: "The template JSON file (an imageTemplates resource or an ARM deployment template).")
    var template: String

    @OptionGroup var parameterOptions: ParameterOptions
    @OptionGroup var stateFlags: StateFlags

    func validate() throws {
        let allowed = name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }
        guard allowed, (1...64).contains(name.count), name.first != "." else {
            throw ValidationError("expected a template name of 1-64 letters, digits, '-', '_' or '.', found \"\(name)\"")
        }
    }

    func run() throws {
        let path = template.hasPrefix("/") ? template : FileManager.default.currentDirectoryPath + "/" + template
        let inputs = try parameterOptions.inputs()
        let result = TemplateLoader.load(file: path, inputs: inputs)
        DiagnosticPrinter.printDiagnostics(result, file: template)
        guard result.isValid else {
            printError("\(template): invalid: \(result.errors.count) error\(result.errors.count == 1 ? "" : "s"); nothing was created")
            throw ExitCode.failure
        }
        let candidates = result.templates.count == 1 ? result.templates : result.templates.filter { $0.template.name.caseInsensitiveEquals(name) }
        guard candidates.count == 1, let chosen = candidates.first else {
            throw fail(KilnError(.invalidArgument, "\(template) holds \(result.templates.count) image templates (\(result.templates.map(\.template.name).joined(separator: ", "))); name the template after the one to create"))
        }
        let store = try stateFlags.open()
        do throws(KilnError) {
            // A folder per template keeps the file's own name, from which a bare imageTemplates resource takes its name.
            let directory = try stateFlags.state.create("templates/\(name.lowercased())-\(RunID.make())")
            let stored = directory + "/" + (path as NSString).lastPathComponent
            guard let data = FileManager.default.contents(atPath: path) else {
                throw KilnError(.io, "cannot read \(path)")
            }
            try AtomicFile.write(data, to: stored)
            // Secure parameters are never stored: `template run` takes them from the environment again.
            let secure = Set(result.secureParameterNames.map { $0.lowercased() })
            let storedParameters = inputs.flattenedParameters.filter { !secure.contains($0.key.lowercased()) }
            do {
                try store.createTemplate(TemplateRow(name: name, templatePath: path, storedPath: stored, resourceName: chosen.template.name,
                                                     parameters: storedParameters, location: chosen.template.location))
            } catch {
                try? FileManager.default.removeItem(atPath: directory)
                throw error
            }
        } catch {
            throw fail(error)
        }
        print("created template \(name) from \(template)")
        for secure in result.secureParameterNames {
            print("the \(secure) parameter is secure and not stored: kiln template run takes it from \(DeploymentInputs.secureEnvironmentPrefix)\(secure)")
        }
    }
}

struct TemplateRunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Build a created template.",
        discussion: """
        In the foreground like kiln build, or with --no-wait in a background process that outlives the terminal: \
        follow it with `kiln template logs NAME --follow`, stop it with `kiln template cancel NAME`.
        """
    )

    @Argument(help: "The template's name.")
    var name: String

    @Flag(help: "Start the build in the background and return once it is running.")
    var noWait = false

    @Option(help: ArgumentHelp("The run's ID (set by --no-wait for the background process).", visibility: .hidden))
    var runID: String?

    @OptionGroup var machine: MachineFlags
    @OptionGroup var runOptions: BuildRunOptions

    func run() async throws {
        let state = machine.state
        let store: StateStore
        do { store = try StateStore.open(state) } catch { throw fail(error) }
        let row = try requireTemplate(name, in: store)
        if let active = (try? store.runs(template: row.name))?.first(where: \.isActive), active.record.runID != runID {
            throw fail(KilnError(.invalidState, "template \(row.name) already has a run in progress (\(active.record.runID), \(active.record.runSubState.rawValue)); wait for it or cancel it with kiln template cancel \(row.name)"))
        }
        if noWait {
            try startInBackground(row, state: state, store: store)
            return
        }
        var request = BuildRequest(templatePath: row.storedPath, name: row.resourceName, parameters: row.parameterValues, state: state,
                                   accelerator: machine.accel, libvirtURI: machine.libvirtURI, onError: runOptions.onError,
                                   sshTimeout: runOptions.sshTimeoutDuration, createdTemplateName: row.name, runID: runID,
                                   useCache: !runOptions.noCache, writeCheckpoints: !runOptions.noCheckpoints, offline: runOptions.offline, force: runOptions.force)
        request.isolateNetwork = runOptions.isolateNetwork
        let record = try await BuildCommand.execute(request, printer: runOptions.printer)
        if record.runState != .succeeded { throw ExitCode.failure }
    }

    private func startInBackground(_ row: TemplateRow, state: StateDirectory, store: StateStore) throws {
        let runID = RunID.make()
        let runDirectory = state.runsPath + "/" + runID
        let logPath = runDirectory + "/worker.log"
        var arguments = ["template", "run", row.name, "--run-id", runID, "--state-dir", state.path, "--accel", machine.accel.rawValue]
            + runOptions.forwardedArguments
        if let uri = machine.libvirtURI { arguments += ["--connect", uri] }
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

struct TemplateCancelCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cancel",
        abstract: "Cancel a template's run in progress (from any terminal): the VM is destroyed, the run ends Canceled."
    )

    @Argument(help: "The template's name.")
    var name: String

    @OptionGroup var stateFlags: StateFlags

    func run() async throws {
        let store = try stateFlags.open()
        let row = try requireTemplate(name, in: store)
        let runs: [StoredRun]
        do { runs = try store.runs(template: row.name) } catch { throw fail(error) }
        guard let active = runs.first(where: \.isActive), let owner = active.owner else {
            throw fail(KilnError(.invalidState, "template \(row.name) has no run in progress" + (runs.first.map { "; its last run \($0.record.runID) is \($0.record.runState.rawValue)" } ?? "")))
        }
        let start = ContinuousClock.now
        do { try store.markCanceling(runID: active.record.runID) } catch { throw fail(error) }
        guard kill(owner.pid, SIGTERM) == 0 else {
            throw fail(KilnError(.external, "cannot signal the build process \(owner.pid): \(String(cString: strerror(errno)))"))
        }
        print("canceling run \(active.record.runID) of \(row.name) (pid \(owner.pid))")
        while ContinuousClock.now - start < .seconds(60) {
            if let run = try? store.run(id: active.record.runID), !run.isActive {
                let elapsed = ContinuousClock.now - start
                print("run \(run.record.runID): \(run.record.runState.rawValue) after \(DurationText.format(elapsed))")
                if run.record.runState != .canceled { throw ExitCode.failure }
                return
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw fail(KilnError(.timeout, "run \(active.record.runID) did not reach Canceled within 60s (pid \(owner.pid) is still running)"))
    }
}

struct TemplateShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Show a template's properties and lastRunStatus (--json: the resource as `az image builder show` prints it)."
    )

    @Argument(help: "The template's name.")
    var name: String

    @Flag(help: "Print the resource as JSON.")
    var json = false

    @OptionGroup var stateFlags: StateFlags

    func run() throws {
        let store = try stateFlags.open()
        let row = try requireTemplate(name, in: store)
        let last = try? store.runs(template: row.name).first
        if json {
            print(JSONPrinter.print(try Self.resource(row, lastRun: last)))
            return
        }
        print("name:          \(row.name)")
        print("id:            \(LocalResource.templateID(row.name))")
        print("location:      \(row.location)")
        print("created:       \(row.createdAt) from \(row.templatePath)")
        if let last {
            print("lastRunStatus: \(last.record.runState.rawValue) (\(last.record.runSubState.rawValue)), run \(last.record.runID)")
            print("  started:     \(last.record.startTime)" + (last.record.endTime.map { ", ended \($0)" } ?? ""))
            if !last.record.message.isEmpty { print("  message:     \(last.record.message)") }
            for output in last.record.runOutputs {
                print("  runOutput \(output.runOutputName) (\(output.type)): \(output.provisioningState) \(output.artifactId ?? output.artifactUri ?? output.error ?? "")")
            }
        } else {
            print("lastRunStatus: never run (kiln template run \(row.name))")
        }
    }

    /// The imageTemplates resource: the effective template under the local ID, with provisioningState and lastRunStatus.
    static func resource(_ row: TemplateRow, lastRun: StoredRun?) throws -> JSONNode {
        // Secure parameters may come from the environment, as when the template was created.
        let loaded = TemplateLoader.load(file: row.storedPath, inputs: DeploymentInputs(parameters: row.parameterValues,
                                                                                        environment: ProcessInfo.processInfo.environment))
        guard let chosen = loaded.templates.first(where: { $0.template.name == row.resourceName }) ?? loaded.templates.first,
              var members = chosen.template.effectiveJSON.members else {
            throw fail(KilnError(.invalidState, "the stored copy of template \(row.name) (\(row.storedPath)) no longer loads: \(loaded.errors.map(\.description).joined(separator: "; "))"))
        }
        members.removeAll { $0.key == "name" || $0.key == "apiVersion" }
        members.insert(JSONMember(key: "id", value: JSONNode(.string(LocalResource.templateID(row.name)))), at: 0)
        members.insert(JSONMember(key: "name", value: JSONNode(.string(row.name))), at: 1)
        if let index = members.firstIndex(where: { $0.key == "properties" }), var properties = members[index].value.members {
            properties.append(JSONMember(key: "provisioningState", value: JSONNode(.string("Succeeded"))))
            if let lastRun {
                let formatter = ISO8601DateFormatter()
                var status: [JSONMember] = [
                    JSONMember(key: "startTime", value: JSONNode(.string(formatter.string(from: lastRun.record.startTime)))),
                    JSONMember(key: "endTime", value: JSONNode(lastRun.record.endTime.map { .string(formatter.string(from: $0)) } ?? .null)),
                    JSONMember(key: "runState", value: JSONNode(.string(lastRun.record.runState.rawValue))),
                    JSONMember(key: "runSubState", value: JSONNode(.string(lastRun.record.runSubState.rawValue))),
                    JSONMember(key: "message", value: JSONNode(.string(lastRun.record.message))),
                ]
                status.append(JSONMember(key: "runId", value: JSONNode(.string(lastRun.record.runID))))
                properties.append(JSONMember(key: "lastRunStatus", value: JSONNode(.object(status))))
            }
            members[index] = JSONMember(key: "properties", value: JSONNode(.object(properties)))
        }
        return JSONNode(.object(members))
    }
}

struct TemplateListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List created templates and their last run.")

    @OptionGroup var stateFlags: StateFlags

    func run() throws {
        let store = try stateFlags.open()
        let rows: [TemplateRow]
        do { rows = try store.templates() } catch { throw fail(error) }
        var table = [["NAME", "LOCATION", "LAST RUN", "STATE", "SUBSTATE", "STARTED"]]
        for row in rows {
            let last = try? store.runs(template: row.name).first
            table.append([row.name, row.location, last?.record.runID ?? "-", last?.record.runState.rawValue ?? "-",
                          last?.record.runSubState.rawValue ?? "-", last.map { ISO8601DateFormatter().string(from: $0.record.startTime) } ?? "-"])
        }
        printTable(table)
    }
}

struct TemplateDeleteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete",
        abstract: "Delete a template with its run history and staging outputs (refused while a run is in progress).",
        discussion: """
        As AIB removes its staging resource group, this removes each run's directory, including VHD outputs that were \
        written there and not moved (a VHD whose uri put it elsewhere stays). Managed images and gallery versions \
        the runs produced are separate resources and stay.
        """
    )

    @Argument(help: "The template's name.")
    var name: String

    @OptionGroup var stateFlags: StateFlags

    func run() throws {
        let store = try stateFlags.open()
        let row = try requireTemplate(name, in: store)
        let runs: [StoredRun]
        do { runs = try store.deleteTemplate(named: row.name) } catch { throw fail(error) }
        let runsRoot = stateFlags.state.runsPath + "/"
        for run in runs {
            for output in run.record.runOutputs where output.type == "VHD" {
                guard let path = output.path, FileManager.default.fileExists(atPath: path) else { continue }
                if path.hasPrefix(run.runDirectory + "/") {
                    print("removed staging output \(path) (runOutput \(output.runOutputName) of run \(run.record.runID))")
                } else {
                    print("kept \(path) (runOutput \(output.runOutputName) of run \(run.record.runID)): its uri put it outside the staging area")
                }
            }
            if run.runDirectory.hasPrefix(runsRoot) {
                try? FileManager.default.removeItem(atPath: run.runDirectory)
            }
        }
        let storedDirectory = (row.storedPath as NSString).deletingLastPathComponent
        if storedDirectory.hasPrefix(stateFlags.state.path + "/templates/") {
            try? FileManager.default.removeItem(atPath: storedDirectory)
        }
        print("deleted template \(row.name) and \(runs.count) run\(runs.count == 1 ? "" : "s")")
    }
}

struct TemplateLogsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "logs", abstract: "Print the customization.log of a template's latest run.")

    @Argument(help: "The template's name.")
    var name: String

    @Option(help: "A run other than the latest.")
    var run: String?

    @Flag(help: "Keep printing as the log grows, until the run ends.")
    var follow = false

    @OptionGroup var stateFlags: StateFlags

    func run() async throws {
        let store = try stateFlags.open()
        let row = try requireTemplate(name, in: store)
        let runs = (try? store.runs(template: row.name)) ?? []
        guard let chosen = run.map({ id in runs.first { $0.record.runID == id } }) ?? runs.first else {
            throw fail(KilnError(.notFound, run.map { "expected run \($0) of template \(row.name), found none" } ?? "template \(row.name) has not run yet"))
        }
        let path = chosen.runDirectory + "/customization.log"
        var offset: UInt64 = 0
        func drain() {
            guard let handle = FileHandle(forReadingAtPath: path) else { return }
            defer { try? handle.close() }
            try? handle.seek(toOffset: offset)
            let data = handle.readDataToEndOfFile()
            offset += UInt64(data.count)
            FileHandle.standardOutput.write(data)
        }
        drain()
        guard follow else { return }
        while true {
            let active = (try? store.run(id: chosen.record.runID))?.isActive ?? false
            drain()
            if !active { break }
            try await Task.sleep(for: .milliseconds(500))
        }
    }
}

struct TemplateOutputCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "output",
        abstract: "Print a runOutput as `az resource show …/runOutputs/NAME` does.",
        discussion: "NAME is a created template or the template name of a one-shot kiln build; the newest run with that runOutput answers."
    )

    @Argument(help: "The template's name.")
    var name: String

    @Argument(help: "The runOutputName.")
    var runOutput: String

    @OptionGroup var stateFlags: StateFlags

    func run() throws {
        let store = try stateFlags.open()
        let runs: [StoredRun]
        do { runs = try store.runs(template: name, createdOnly: false) } catch { throw fail(error) }
        for run in runs {
            guard let output = run.record.runOutputs.first(where: { $0.runOutputName.caseInsensitiveEquals(runOutput) }) else { continue }
            var properties: [JSONMember] = []
            if let id = output.artifactId { properties.append(JSONMember(key: "artifactId", value: JSONNode(.string(id)))) }
            if let uri = output.artifactUri { properties.append(JSONMember(key: "artifactUri", value: JSONNode(.string(uri)))) }
            properties.append(JSONMember(key: "provisioningState", value: JSONNode(.string(output.provisioningState))))
            let node = JSONNode(.object([
                JSONMember(key: "id", value: JSONNode(.string(LocalResource.runOutputID(template: run.record.templateName, runOutput: output.runOutputName)))),
                JSONMember(key: "name", value: JSONNode(.string(output.runOutputName))),
                JSONMember(key: "properties", value: JSONNode(.object(properties))),
                JSONMember(key: "resourceGroup", value: JSONNode(.string("kiln"))),
                JSONMember(key: "type", value: JSONNode(.string("Microsoft.VirtualMachineImages/imageTemplates/runOutputs"))),
            ]))
            print(JSONPrinter.print(node))
            return
        }
        let known = Set(runs.flatMap { $0.record.runOutputs.map(\.runOutputName) }).sorted()
        throw fail(KilnError(.notFound, runs.isEmpty
            ? "expected runs of a template named \(name), found none"
            : "expected a runOutput named \(runOutput) in the runs of \(name), found \(known.isEmpty ? "none" : known.joined(separator: ", "))"))
    }
}
