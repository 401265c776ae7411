import Foundation
import KilnMachine
import KilnSupport

/// Runs the built `kiln` executable, as a user would.
public enum KilnExecutable {
    public static var path: String {
        // The test bundle sits beside the products in .build/<triple>/debug.
        let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        var directory = bundle
        while directory.path != "/" {
            let candidate = directory.appendingPathComponent("kiln").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            directory.deleteLastPathComponent()
        }
        return bundle.appendingPathComponent("kiln").path
    }

    public struct Result: Sendable {
        public var status: Int32
        public var stdout: String
        public var stderr: String
    }

    /// Runs kiln to its end. `through`: a command prefix that runs kiln (`nsenter … --`), its first element an
    /// absolute path. The wait happens on a thread of its own (`OwnThread`): a run takes seconds to minutes.
    public static func run(_ arguments: [String], environment: [String: String] = [:], through prefix: [String] = []) async throws -> Result {
        try await OwnThread.run { try runBlocking(arguments, environment: environment, through: prefix) }
    }

    static func runBlocking(_ arguments: [String], environment: [String: String], through prefix: [String]) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: prefix.first ?? path)
        process.arguments = prefix.isEmpty ? arguments : Array(prefix.dropFirst()) + [path] + arguments
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        // Drain stderr on another thread so that neither pipe can fill and stall the child.
        nonisolated(unsafe) var stderr = Data()
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async {
            stderr = err.fileHandleForReading.readDataToEndOfFile()
            group.leave()
        }
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        return Result(status: reap(process), stdout: String(decoding: stdout, as: UTF8.self),
                      stderr: String(decoding: stderr, as: UTF8.self))
    }

    /// Starts `kiln` in the background, its stdout and stderr going to `outputPath` (`through`: as for `run`).
    public static func start(_ arguments: [String], environment: [String: String] = [:], outputPath: String,
                             through prefix: [String] = []) throws -> Background {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: prefix.first ?? path)
        process.arguments = prefix.isEmpty ? arguments : Array(prefix.dropFirst()) + [path] + arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        FileManager.default.createFile(atPath: outputPath, contents: nil)
        let output = try FileHandle(forWritingTo: URL(fileURLWithPath: outputPath))
        process.standardOutput = output
        process.standardError = output
        try process.run()
        return Background(process: process)
    }

    public final class Background: @unchecked Sendable {
        let process: Process
        init(process: Process) { self.process = process }
        public var pid: Int32 { process.processIdentifier }
        /// Waits (on a thread of its own) for the exit and returns the status.
        public func wait() async throws -> Int32 {
            try await OwnThread.run { [process] in KilnExecutable.reap(process) }
        }
    }

    /// The exit status (128 + signal when killed). Reaps the child with waitpid(2) itself: Foundation's own
    /// monitor was seen to miss a child's exit (a zombie left, waitUntilExit blocked for good) after that child
    /// had started a detached grandchild (`kiln template run --no-wait`).
    static func reap(_ process: Process) -> Int32 {
        var status: Int32 = 0
        var result: pid_t
        repeat {
            result = waitpid(process.processIdentifier, &status, 0)
        } while result == -1 && errno == EINTR
        guard result == process.processIdentifier else {
            // Foundation reaped it first.
            process.waitUntilExit()
            return process.terminationStatus
        }
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : 128 + signal
    }
}


/// A static HTTP server on 127.0.0.1 (Python's http.server) serving one directory, for scriptUri and sourceUri tests.
public final class LoopbackHTTPServer: @unchecked Sendable {
    public let port: Int
    private let process: Process

    /// Serves on a port the kernel reports free (a random one could be a VM's forward of another test), and fails
    /// if the server never answers (it could not bind, or did not start in 30 s on a loaded machine).
    public init(directory: String) throws {
        port = try PortAllocator.reserve(nil)
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["-m", "http.server", String(port), "--bind", "127.0.0.1", "--directory", directory]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        for _ in 0..<300 where process.isRunning {
            if PortAllocator.isListening(port) { return }
            Thread.sleep(forTimeInterval: 0.1)
        }
        stop()
        throw KilnError(.external, "python3 -m http.server did not listen on 127.0.0.1:\(port)")
    }

    public func url(_ name: String) -> String { "http://127.0.0.1:\(port)/\(name)" }

    /// Kills the server. Polls rather than waitUntilExit, which can miss the exit of a killed child on Linux.
    public func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        for _ in 0..<100 where process.isRunning {
            Thread.sleep(forTimeInterval: 0.05)
        }
    }

    deinit { stop() }
}
