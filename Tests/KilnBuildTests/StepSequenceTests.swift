import Foundation
import KilnMachine
import KilnSupport
import Testing
@testable import KilnBuild
import KilnCustomizers
@testable import KilnTemplate

/// The build's step runner (Packer's multistep): steps in order, a halt ends the build early, and every step that
/// started is cleaned up once, newest first, whether the build succeeded, failed or was cancelled.
@Suite("Build steps: order and cleanup")
struct StepSequenceTests {
    /// A step that records its run and cleanup, and fails, halts or waits when told.
    struct Recorder: BuildStep {
        enum Behaviour: Sendable { case succeed, fail, halt, wait }
        let name: String
        let trace: Locked<[String]>
        var behaviour = Behaviour.succeed

        func run(_ build: BuildEngine, _ state: BuildState) async throws -> StepAction {
            trace.withLock { $0.append("run \(name)") }
            switch behaviour {
            case .succeed: return .proceed
            case .halt: return .halt
            case .fail: throw StepFailure(message: "\(name) failed")
            case .wait:
                try await Task.sleep(for: .seconds(60))
                return .proceed
            }
        }

        func cleanup(_ build: BuildEngine) async {
            trace.withLock { $0.append("cleanup \(name)") }
        }
    }

    struct Fixture {
        let folder: String
        let engine: BuildEngine
        let state: BuildState

        init() throws {
            folder = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-steps-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            let template = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("Fixtures/templates/valid/user-linux-debian-vhd.json").path
            let loaded = try #require(TemplateLoader.load(file: template).templates.first)
            engine = BuildEngine(BuildRequest(templatePath: template, state: StateDirectory(explicit: folder + "/state")), events: { _ in })
            state = BuildState(loaded: loaded, log: CustomizationLog(path: folder + "/customization.log"), offlineCache: nil, downloads: folder)
        }

        func remove() { try? FileManager.default.removeItem(atPath: folder) }
    }

    @Test func stepsRunInOrderAndAreCleanedUpInReverse() async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        let trace = Locked<[String]>([])
        let sequence = StepSequence()
        let finished = try await sequence.run([Recorder(name: "resolve", trace: trace), Recorder(name: "boot", trace: trace)],
                                              on: fixture.engine, state: fixture.state)
        #expect(finished)
        _ = try await sequence.run([Recorder(name: "customize[0]", trace: trace)], on: fixture.engine, state: fixture.state)
        await sequence.cleanup(fixture.engine)
        await sequence.cleanup(fixture.engine)
        #expect(trace.current == ["run resolve", "run boot", "run customize[0]", "cleanup customize[0]", "cleanup boot", "cleanup resolve"])
    }

    @Test func aFailedStepEndsTheRunAndEveryStepThatStartedIsCleanedUp() async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        let trace = Locked<[String]>([])
        let sequence = StepSequence()
        await #expect(throws: StepFailure.self) {
            try await sequence.run([Recorder(name: "boot", trace: trace), Recorder(name: "customize[0]", trace: trace, behaviour: .fail),
                                    Recorder(name: "validate", trace: trace)], on: fixture.engine, state: fixture.state)
        }
        await sequence.cleanup(fixture.engine)
        #expect(trace.current == ["run boot", "run customize[0]", "cleanup customize[0]", "cleanup boot"])
    }

    @Test func aHaltEndsTheRunEarly() async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        let trace = Locked<[String]>([])
        let sequence = StepSequence()
        let finished = try await sequence.run([Recorder(name: "validate", trace: trace, behaviour: .halt), Recorder(name: "deprovision", trace: trace)],
                                              on: fixture.engine, state: fixture.state)
        #expect(!finished)
        await sequence.cleanup(fixture.engine)
        #expect(trace.current == ["run validate", "cleanup validate"])
    }

    @Test func aCancelStopsTheRunningStepAndNoLaterOneStarts() async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        let trace = Locked<[String]>([])
        let sequence = StepSequence()
        let (engine, state) = (fixture.engine, fixture.state)
        let work = Task {
            try await sequence.run([Recorder(name: "boot", trace: trace), Recorder(name: "customize[0]", trace: trace, behaviour: .wait),
                                    Recorder(name: "validate", trace: trace)], on: engine, state: state)
        }
        while !trace.current.contains("run customize[0]") { try await Task.sleep(for: .milliseconds(10)) }
        work.cancel()
        await #expect(throws: CancellationError.self) { try await work.value }
        await sequence.cleanup(fixture.engine)
        #expect(trace.current == ["run boot", "run customize[0]", "cleanup customize[0]", "cleanup boot"])
    }

    @Test func thePlannerPicksTheStepsForTheGuest() throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        let source = SourceImage(path: fixture.folder + "/disk.qcow2", format: "qcow2", virtualSizeBytes: 1 << 30, firmware: .bios,
                                 osType: "Linux", hasCloudInit: true, urn: nil)
        var plan = try BuildPlanner.plan(fixture.state.loaded, request: fixture.engine.request, source: source)
        let linux = BuildPlanner.steps(for: plan).map(\.name)
        #expect(linux.first == "boot or resume" && linux.dropFirst().first == "connect")
        #expect(Array(linux.suffix(4)) == ["validate", "deprovision", "power off", "distribute"])
        #expect(linux.filter { $0.hasPrefix("customize[") }.count == plan.customize.count)
        plan.guestOS = .windows
        let windows = BuildPlanner.steps(for: plan).map(\.name)
        #expect(windows.first == "boot" && windows.dropFirst().first == "connect")
        #expect(windows.count == linux.count)
    }
}
