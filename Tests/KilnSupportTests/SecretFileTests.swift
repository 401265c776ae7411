import Foundation
import Testing
@testable import KilnSupport

/// Secrets are written 0600 from their first byte, whole, and never through a link someone placed.
@Suite("Secret files")
struct SecretFileTests {
    static func scratch() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-secret-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
        return path
    }

    static func info(_ path: String) -> stat? {
        var info = stat()
        return lstat(path, &info) == 0 ? info : nil
    }

    @Test func aSecretIsMode0600AndNothingElseIsLeftBeside() throws {
        let folder = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let key = folder + "/id_ed25519"
        try SecretFile.write(Data("-----BEGIN OPENSSH PRIVATE KEY-----\n".utf8), to: key)
        let info = try #require(Self.info(key))
        #expect(info.st_mode & S_IFMT == S_IFREG)
        #expect(info.st_mode & 0o7777 == 0o600)
        #expect(FileManager.default.contents(atPath: key) == Data("-----BEGIN OPENSSH PRIVATE KEY-----\n".utf8))
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder) == ["id_ed25519"])
        // Replacing an existing, wider file: the new one is 0600 too.
        chmod(key, 0o644)
        try SecretFile.write(Data("second".utf8), to: key)
        #expect(Self.info(key).map { $0.st_mode & 0o7777 } == 0o600)
        #expect(FileManager.default.contents(atPath: key) == Data("second".utf8))
    }

    @Test func theTemporaryFileIsCreatedWithTheModeNotChangedAfterwards() throws {
        let folder = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let (temporary, descriptor) = try AtomicFile.createTemporary(beside: folder + "/password", mode: 0o600)
        defer { close(descriptor); unlink(temporary) }
        #expect(temporary.hasPrefix(folder + "/password.tmp-\(getpid())-"))
        #expect(Self.info(temporary).map { $0.st_mode & 0o7777 } == 0o600, "0600 before a byte is written")
    }

    @Test func aLinkAtTheTargetIsReplacedNotFollowed() throws {
        let folder = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let victim = folder + "/victim"
        #expect(FileManager.default.createFile(atPath: victim, contents: Data("victim".utf8), attributes: [.posixPermissions: 0o644]))
        let target = folder + "/winrm-password"
        try FileManager.default.createSymbolicLink(atPath: target, withDestinationPath: victim)
        try SecretFile.write(Data("p4ss".utf8), to: target)
        let info = try #require(Self.info(target))
        #expect(info.st_mode & S_IFMT == S_IFREG, "the link is gone, a regular file is there")
        #expect(info.st_mode & 0o7777 == 0o600)
        #expect(FileManager.default.contents(atPath: victim) == Data("victim".utf8), "the link's target is untouched")
        #expect(Self.info(victim).map { $0.st_mode & 0o7777 } == 0o644)
    }

    @Test func aMissingDirectoryIsAClearError() {
        let error = #expect(throws: KilnError.self) { try SecretFile.write(Data("x".utf8), to: "/nonexistent-kiln/key") }
        #expect(error?.message.contains("/nonexistent-kiln/key.tmp-") == true, "\(error?.message ?? "")")
    }

    @Test func atomicWritesWithoutPermissionsFollowTheUmaskAsBefore() throws {
        let folder = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let previous = umask(0o022)
        defer { umask(previous) }
        try AtomicFile.write(Data("{}".utf8), to: folder + "/run.json")
        #expect(Self.info(folder + "/run.json").map { $0.st_mode & 0o7777 } == 0o644)
        try AtomicFile.write(Data("{}".utf8), to: folder + "/wide", permissions: 0o640)
        #expect(Self.info(folder + "/wide").map { $0.st_mode & 0o7777 } == 0o640)
    }

    @Test func theStateDirectoryAndARunDirectoryCreatedByKilnAre0700() throws {
        let folder = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let state = StateDirectory(explicit: folder + "/state")
        let run = try state.create("runs/0123abcd")
        for directory in [state.path, state.runsPath, run] {
            #expect(Self.info(directory).map { $0.st_mode & 0o7777 } == 0o700, "\(directory)")
        }
    }
}
