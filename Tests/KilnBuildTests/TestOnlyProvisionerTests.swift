import Foundation
import KilnGuest
import KilnSupport
import Testing
@testable import KilnBuild
@testable import KilnCustomizers

/// A customizer type that exists only here: one file, conforming to `Provisioner`, runs through the same Linux
/// runner (labels, log, events, stand-in session) as the five AIB types. A real one would add its case to the
/// template model and its line to `Customizer.provisioner`.
struct EchoProvisioner: Provisioner {
    var name: String?
    var text: String

    var typeName: String { "Echo" }
    var packerName: String { "echo" }

    func run(linux runner: StepRunner, label: String, index: Int, path: String) async throws {
        let result = try await runner.session.exec("echo \(ShellQuote.quote(text))")
        runner.log.write(label, "echo: \(result)")
        guard result.succeeded else { throw StepFailure(message: "\(path) (\(label)): echo failed with \(result)") }
    }
}

@Suite("A customizer type added in one file (test only)")
struct TestOnlyProvisionerTests {
    @Test func runsThroughTheLinuxRunnerAgainstAStandInSession() async throws {
        let fixture = try LinuxStepRunnerTests.Fixture()
        defer { fixture.remove() }
        let session = LinuxStepRunnerTests.StandInSession(bootID: "boot-1")
        let runner = fixture.runner(LinuxStepRunnerTests.connection(session))
        try await runner.run(EchoProvisioner(name: nil, text: "it's here"), index: 4, path: "properties.customize[4]")
        #expect(session.calls.map(\.command) == ["echo 'it'\\''s here'"])
        #expect(fixture.logText.contains("customize[4] Echo"), "\(fixture.logText)")
        #expect(fixture.logText.contains("echo: exit status 0"), "\(fixture.logText)")
    }

    @Test func aFailedCommandIsAStepFailure() async throws {
        let fixture = try LinuxStepRunnerTests.Fixture()
        defer { fixture.remove() }
        let session = LinuxStepRunnerTests.StandInSession(bootID: "boot-1", respond: { _ in ("", .exited(1)) })
        let runner = fixture.runner(LinuxStepRunnerTests.connection(session))
        await #expect(throws: StepFailure.self) {
            try await runner.run(EchoProvisioner(name: "named", text: "x"), index: 0, path: "properties.customize[0]")
        }
    }
}
