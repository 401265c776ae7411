import Foundation
import Testing
@testable import KilnTemplate

/// Fixtures: every example of the AIB template reference embedded in a full template, user-style templates,
/// ARM wrappers, and invalid templates with the exact paths that must be reported.
enum Fixtures {
    static let directory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/templates")

    static func files(_ folder: String) -> [String] {
        let url = directory.appendingPathComponent(folder)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: url.path)) ?? []
        return names.filter { $0.hasSuffix(".json") && !["manifest.json", "expected.json"].contains($0) }.sorted()
    }

    static func path(_ folder: String, _ file: String) -> String {
        directory.appendingPathComponent(folder).appendingPathComponent(file).path
    }

    static func manifest(_ folder: String, _ name: String) -> [String: Any] {
        let url = directory.appendingPathComponent(folder).appendingPathComponent(name)
        guard let data = try? Data(contentsOf: url),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return [:] }
        return (object["files"] as? [String: Any]) ?? object
    }

    static func parameters(_ entry: Any?) -> [String: String] {
        guard let entry = entry as? [String: Any], let raw = entry["parameters"] as? [String: Any] else { return [:] }
        return raw.mapValues { "\($0)" }
    }
}

@Suite("Template fixtures")
struct FixtureTests {
    static let validFiles = Fixtures.files("valid")
    static let invalidFiles = Fixtures.files("invalid")

    @Test("the fixture sets are there")
    func fixturesExist() {
        #expect(Self.validFiles.count >= 20)
        #expect(Self.invalidFiles.count >= 25)
    }

    @Test("valid templates validate", arguments: validFiles)
    func valid(file: String) {
        let entry = Fixtures.manifest("valid", "manifest.json")[file]
        let result = TemplateLoader.load(file: Fixtures.path("valid", file), parameters: Fixtures.parameters(entry))
        #expect(result.errors.isEmpty, "\(file): \(result.errors.map(\.description))")
        #expect(!result.templates.isEmpty)
        if let entry = entry as? [String: Any], let warnings = entry["warnings"] as? Int {
            #expect(result.warnings.count == warnings, "\(file): \(result.warnings.map(\.description))")
        }
    }

    @Test("invalid templates report exactly the expected paths", arguments: invalidFiles)
    func invalid(file: String) throws {
        let expected = try #require(Fixtures.manifest("invalid", "expected.json")[file] as? [String: Any], "no expectation for \(file)")
        let result = TemplateLoader.load(file: Fixtures.path("invalid", file), parameters: Fixtures.parameters(expected))
        #expect(!result.isValid, "\(file) validated")
        if let malformed = expected["malformed"] as? [String: Any] {
            let error = try #require(result.errors.first)
            #expect(result.errors.count == 1)
            #expect(error.message.hasPrefix("malformed JSON"))
            #expect(error.position?.line == malformed["line"] as? Int, "\(error)")
            #expect(error.position?.column == malformed["column"] as? Int, "\(error)")
            return
        }
        let paths = Set((expected["paths"] as? [String]) ?? [])
        let reported = Set(result.errors.map(\.path.description))
        #expect(reported == paths, "\(file): \(result.errors.map(\.description))")
        for error in result.errors {
            #expect(error.message.contains("expected"), "\(error)")
            #expect(error.message.contains("found"), "\(error)")
        }
    }
}
