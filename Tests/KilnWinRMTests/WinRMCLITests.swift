import Foundation
import KilnTestSupport
import Testing

/// `kiln winrm exec` against the WS-Management test server.
@Suite(.serialized) struct WinRMCLITests {
    @Test func execStreamsOutputAndExitsWithTheCommandsCode() async throws {
        let server = try WinRMTestServer(auth: .ntlm)
        defer { server.stop() }
        let environment = ["KILN_WINRM_PASSWORD": server.password]
        let base = ["winrm", "exec", "--url", server.url, "--username", server.username]

        let result = try await KilnExecutable.run(base + ["--", "printf 'out\\n'; printf 'err\\n' >&2; exit 4"], environment: environment)
        #expect(result.status == 4)
        #expect(result.stdout == "out\n")
        #expect(result.stderr.contains("err\n"))

        // Several arguments are joined with Windows quoting (CommandLineToArgvW rules).
        let quoted = try await KilnExecutable.run(base + ["--", "printf", "%s,", "a b", "c\"d"], environment: environment)
        #expect(quoted.status == 0, "\(quoted.stderr)")
        #expect(quoted.stdout == "a b,c\"d,")

        let custom = try await KilnExecutable.run(base + ["--password-env", "WIN_PW", "--", "echo ok"], environment: ["WIN_PW": server.password])
        #expect(custom.status == 0)
        #expect(custom.stdout == "ok\n")

        let unset = try await KilnExecutable.run(base + ["--password-env", "KILN_TEST_UNSET_VARIABLE", "--", "echo never"])
        #expect(unset.status == 1)
        #expect(unset.stderr.contains("KILN_TEST_UNSET_VARIABLE"))

        let wrong = try await KilnExecutable.run(base + ["--", "echo never"], environment: ["KILN_WINRM_PASSWORD": "wrong"])
        #expect(wrong.status == 1)
        #expect(wrong.stderr.contains("refused the credentials of kiln"), "\(wrong.stderr)")

        let basicAgainstNTLM = try await KilnExecutable.run(base + ["--auth", "basic", "--", "echo never"], environment: environment)
        #expect(basicAgainstNTLM.status == 1)

        let badURL = try await KilnExecutable.run(["winrm", "exec", "--url", "ftp://x", "--username", "u", "--", "echo"], environment: environment)
        #expect(badURL.status == 64)
        #expect(badURL.stderr.contains("expected a WinRM URL"))

        let refused = try await KilnExecutable.run(["winrm", "exec", "--url", "http://127.0.0.1:9/wsman", "--username", "u", "--", "echo"], environment: environment)
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("cannot connect to http://127.0.0.1:9/wsman"), "\(refused.stderr)")
    }
}
