import Foundation

/// Runs short-lived host tools (qemu-img, xorriso, mkfs) off the cooperative thread pool.
/// Launch failure is an error; a non-zero exit is a result the caller inspects.
public enum Subprocess {
    public struct Result: Sendable {
        public var status: Int32
        public var stdout: Data
        public var stderr: Data

        public var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
        public var stderrText: String { String(decoding: stderr, as: UTF8.self) }
        public var succeeded: Bool { status == 0 }
    }

    /// Looks a tool up on PATH and in the sbin directories, which root's tools live in but PATH may lack.
    public static func find(_ name: String) -> String? {
        if name.contains("/") { return FileManager.default.isExecutableFile(atPath: name) ? name : nil }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        let directories = path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/libexec"]
        for directory in directories {
            let candidate = directory + "/" + name
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    public static func run(_ tool: String, _ arguments: [String], timeout: Duration? = nil,
                           environment: [String: String]? = nil, stdinText: String? = nil) async throws(KilnError) -> Result {
        guard let executable = find(tool) else {
            throw KilnError(.notFound, "\(tool) is not installed (run scripts/install-deps)")
        }
        return try await Blocking.run { () throws(KilnError) -> Result in
            try runBlocking(executable, arguments, timeout: timeout, environment: environment, stdinText: stdinText).get()
        }
    }

    /// Runs and requires exit status 0; the error carries the tool's standard error.
    @discardableResult
    public static func check(_ tool: String, _ arguments: [String], timeout: Duration? = nil,
                             environment: [String: String]? = nil, stdinText: String? = nil) async throws(KilnError) -> Result {
        let result = try await run(tool, arguments, timeout: timeout, environment: environment, stdinText: stdinText)
        guard result.succeeded else {
            let detail = result.stderrText.trimmingCharacters(in: .whitespacesAndNewlines)
            throw KilnError(.external, "\(tool) \(arguments.joined(separator: " ")) failed with exit status \(result.status)"
                            + (detail.isEmpty ? "" : ": \(detail)"))
        }
        return result
    }

    public static func runBlocking(_ executable: String, _ arguments: [String], timeout: Duration? = nil,
                                   environment: [String: String]? = nil, stdinText: String? = nil) -> Swift.Result<Result, KilnError> {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let environment {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        let stdout = Pipe(), stderr = Pipe()
        process.standardOutput = stdout
        process.standardError = stderr
        let stdin = Pipe()
        process.standardInput = stdinText == nil ? FileHandle.nullDevice : stdin
        do {
            try process.run()
        } catch {
            return .failure(KilnError(.external, "cannot start \(executable): \(error)"))
        }
        if let stdinText {
            stdin.fileHandleForWriting.write(Data(stdinText.utf8))
            try? stdin.fileHandleForWriting.close()
        }
        let timedOut = Locked(false)
        if let timeout {
            let seconds = timeout.inSeconds
            DispatchQueue.global().asyncAfter(deadline: .now() + seconds) { [process] in
                guard process.isRunning else { return }
                timedOut.withLock { $0 = true }
                process.terminate()
                DispatchQueue.global().asyncAfter(deadline: .now() + 5) {
                    if process.isRunning { kill(process.processIdentifier, SIGKILL) }
                }
            }
        }
        // Drain stderr on another thread so neither pipe can fill up and block the child.
        let errorData = Locked(Data())
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async {
            let data = stderr.fileHandleForReading.readDataToEndOfFile()
            errorData.withLock { $0 = data }
            group.leave()
        }
        let outputData = stdout.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        process.waitUntilExit()
        if timedOut.current, let timeout {
            return .failure(KilnError(.timeout, "\(executable) \(arguments.joined(separator: " ")) did not finish within \(DurationText.format(timeout))"))
        }
        return .success(Result(status: process.terminationStatus, stdout: outputData, stderr: errorData.current))
    }
}
