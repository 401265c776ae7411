import Foundation
import KilnSupport
import Testing
@testable import KilnTemplate

/// Input that is too large, not UTF-8 or nested without end: each is an error naming the file and what was wrong,
/// never a crash, a silent replacement character or a parse of 50 MB.
@Suite("Hostile template and parameter files")
struct HostileInputTests {
    struct Folder {
        let path: String
        init() throws {
            path = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-hostile-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        }
        func remove() { try? FileManager.default.removeItem(atPath: path) }
        func write(_ name: String, _ bytes: [UInt8]) -> String {
            let file = path + "/" + name
            FileManager.default.createFile(atPath: file, contents: Data(bytes))
            return file
        }
    }

    @Test func aTemplateAboveTheLimitIsRefusedBeforeParsing() throws {
        let folder = try Folder()
        defer { folder.remove() }
        // 50 MB of one string: valid JSON, so only the size can refuse it.
        let big = folder.write("big.json", Array("{\"x\": \"".utf8) + [UInt8](repeating: 0x61, count: 50_000_000) + Array("\"}".utf8))
        let clock = ContinuousClock()
        let start = clock.now
        let result = TemplateLoader.load(file: big)
        #expect(clock.now - start < .seconds(2), "refused without parsing")
        #expect(result.errors.count == 1)
        let message = result.errors.first?.message ?? ""
        #expect(message.contains(big), "\(message)")
        #expect(message.contains("at most \(InputFile.maximumBytes) bytes"), "\(message)")
        #expect(message.contains("found 50000009 bytes"), "\(message)")

        // A parameter file too.
        do {
            _ = try DeploymentInputs.readParameterFile(big)
            Issue.record("expected the parameter file to be refused")
        } catch {
            #expect(error.file == big)
            #expect(error.message.contains("at most \(InputFile.maximumBytes) bytes") && error.message.contains("found 50000009 bytes"), "\(error)")
        }
        // Just under the limit is read (and parsed).
        let fits = folder.write("fits.json", Array("{\"x\": \"".utf8) + [UInt8](repeating: 0x61, count: InputFile.maximumBytes - 9) + Array("\"}".utf8))
        #expect(!(TemplateLoader.load(file: fits).errors.first?.message.contains("at most") ?? false))
    }

    @Test func aPipeIsReadUpToTheLimitOnly() throws {
        let folder = try Folder()
        defer { folder.remove() }
        let fifo = folder.path + "/pipe"
        #expect(mkfifo(fifo, 0o600) == 0)
        // The reader stops early: the writer then gets EPIPE, not a signal that ends the test process.
        signal(SIGPIPE, SIG_IGN)
        let writer = Thread {
            let fd = open(fifo, O_WRONLY)
            guard fd >= 0 else { return }
            let chunk = [UInt8](repeating: 0x20, count: 65536)
            var sent = 0
            // More than the limit, then stop: the reader must give up before reading it all.
            while sent < 8 << 20 {
                let written = chunk.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                if written <= 0 { break }
                sent += written
            }
            close(fd)
        }
        writer.start()
        let result = TemplateLoader.load(file: fifo)
        #expect(result.errors.first?.message.contains("found more than that: \(fifo)") == true, "\(result.errors)")
    }

    @Test func invalidUTF8IsAnErrorWithItsOffset() throws {
        let folder = try Folder()
        defer { folder.remove() }
        // Latin-1 "é" (0xE9) inside a string on line 3, where UTF-8 expects a continuation byte.
        var bytes = Array("{\n  \"name\": \"ok\",\n  \"location\": \"caf".utf8)
        let offset = bytes.count
        bytes += [0xE9] + Array("\"\n}".utf8)
        let file = folder.write("latin1.json", bytes)
        let result = TemplateLoader.load(file: file)
        #expect(result.errors.count == 1)
        let error = try #require(result.errors.first)
        #expect(error.message.contains("invalid UTF-8 at byte offset \(offset) (byte 0xE9)"), "\(error.message)")
        #expect(error.position == SourcePosition(line: 3, column: 19), "\(String(describing: error.position))")

        // In a comment too, and in a parameter file.
        let comment = folder.write("comment.json", Array("{ // caf".utf8) + [0xC3, 0x28] + Array("\n}".utf8))
        #expect(TemplateLoader.load(file: comment).errors.first?.message.contains("invalid UTF-8 at byte offset 8") == true)
        do {
            _ = try DeploymentInputs.readParameterFile(comment)
            Issue.record("expected the parameter file to be refused")
        } catch {
            #expect(error.message.contains("invalid UTF-8 at byte offset 8"), "\(error)")
            #expect(error.message.contains("line 1, column 9"), "\(error)")
        }
        // UTF-16 says what it is.
        let utf16 = folder.write("utf16.json", [0xFF, 0xFE] + Array("{}".utf16).flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] })
        #expect(TemplateLoader.load(file: utf16).errors.first?.message.contains("UTF-16") == true)
    }

    @Test("well-formed UTF-8 only", arguments: [
        ([0x41], nil), ([0xC3, 0xA9], nil), ([0xE2, 0x9C, 0x93], nil), ([0xF0, 0x9F, 0x98, 0x80], nil), ([0xEF, 0xBB, 0xBF], nil),
        ([0xC0, 0x80], 0), ([0xE0, 0x80, 0x80], 0), ([0xED, 0xA0, 0x80], 0), ([0xF4, 0x90, 0x80, 0x80], 0), ([0xF5, 0x80, 0x80, 0x80], 0),
        ([0x41, 0x80], 1), ([0x41, 0xE2, 0x9C], 1), ([0xE2, 0x28, 0x93], 0), ([0xFF], 0),
    ] as [([UInt8], Int?)])
    func utf8Validation(bytes: [UInt8], invalidAt: Int?) {
        #expect(JSONParser.firstInvalidUTF8(in: bytes) == invalidAt)
    }

    @Test func nesting100000DeepIsAnError() throws {
        let folder = try Folder()
        defer { folder.remove() }
        let depth = 100_000
        let documents: [(String, String)] = [
            ("arrays", String(repeating: "[", count: depth) + String(repeating: "]", count: depth)),
            ("objects", String(repeating: "{\"a\":", count: depth) + "1" + String(repeating: "}", count: depth)),
        ]
        for (kind, text) in documents {
            let file = folder.write("\(kind).json", Array(text.utf8))
            let template = TemplateLoader.load(file: file)
            #expect(template.errors.count == 1, "\(kind)")
            #expect(template.errors.first?.message.contains("nested at most \(JSONParser.maximumDepth) levels") == true, "\(kind): \(template.errors)")
            do {
                _ = try DeploymentInputs.readParameterFile(file)
                Issue.record("expected the \(kind) parameter file to be refused")
            } catch {
                #expect(error.message.contains("nested at most \(JSONParser.maximumDepth) levels"), "\(kind): \(error)")
            }
            // Inside a parameter file's value, where the outer levels are the file's own.
            let wrapped = folder.write("wrapped-\(kind).json", Array(("{\"parameters\": {\"p\": {\"value\": " + text + "}}}").utf8))
            #expect(throws: ParameterFileError.self) { try DeploymentInputs.readParameterFile(wrapped) }
        }
        // ARM's json() parses a string at evaluation time: the same limit holds there.
        let deepString = String(repeating: "[", count: depth) + String(repeating: "]", count: depth)
        let result = TemplateLoader.load(text: armTemplate(variables: "{\"v\": \"[json('\(deepString)')]\"}", command: "[string(variables('v'))]"))
        #expect(!result.errors.isEmpty)
    }
}
