import Foundation
import Testing
@testable import KilnBuild

@Suite("Secure parameter values in build output")
struct SecretMaskTests {
    @Test("events and customization.log lines show secure values as ***")
    func masking() throws {
        let mask = SecretMask()
        mask.set(["hunter2", "hunter2-long"])
        guard case .output(_, _, let line) = mask.mask(BuildEvent.output(customizer: "s", stream: "stdout", line: "token hunter2-long and hunter2")),
              case .warning(let warning) = mask.mask(BuildEvent.warning("x hunter2")) else {
            Issue.record("events changed kind")
            return
        }
        #expect(line == "token *** and ***")
        #expect(warning == "x ***")

        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-mask-\(UUID().uuidString).log").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let log = CustomizationLog(path: path)
        log.mask = mask
        log.write("step", "login --token hunter2")
        log.close()
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(text.contains("login --token ***"))
        #expect(!text.contains("hunter2"))
    }
}
