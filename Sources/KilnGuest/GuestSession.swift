import KilnSupport

/// What a communicator gives a customizer: run a command with streamed output and an exit status, upload a file.
/// SSH implements it for Linux guests; WinRM for Windows guests.
public protocol GuestSession: AnyObject, Sendable {
    /// Runs `command`, streaming output to `output` as it arrives. A non-zero exit is a value, not an error;
    /// a lost connection is the `.disconnected` outcome, so the caller can tell a reboot from a failure.
    func exec(_ command: String, stdin: [UInt8]?, output: @escaping @Sendable (OutputChunk) -> Void) async throws(KilnError) -> ExecResult

    /// Copies a host file to `remotePath` in the guest, streaming it (any size).
    func upload(localPath: String, remotePath: String) async throws(KilnError)

    /// Closes the session. Idempotent.
    func close() async
}

public struct OutputChunk: Sendable {
    public enum Stream: String, Sendable {
        case stdout
        case stderr
    }

    public var stream: Stream
    public var bytes: [UInt8]

    public init(stream: Stream, bytes: [UInt8]) {
        self.stream = stream
        self.bytes = bytes
    }

    public var text: String { String(decoding: bytes, as: UTF8.self) }
}

public struct ExecResult: Sendable, Equatable, CustomStringConvertible {
    public enum Outcome: Sendable, Equatable {
        /// The command exited with this status.
        case exited(Int32)
        /// The command was killed by a signal ("KILL", "TERM", …).
        case signaled(String)
        /// The connection dropped before the command reported how it ended (Packer's exit code 2300218).
        case disconnected(String)
    }

    public var outcome: Outcome

    public init(_ outcome: Outcome) {
        self.outcome = outcome
    }

    public var exitCode: Int32? {
        if case .exited(let code) = outcome { return code }
        return nil
    }

    public var succeeded: Bool { exitCode == 0 }

    public var description: String {
        switch outcome {
        case .exited(let code): "exit status \(code)"
        case .signaled(let signal): "killed by signal \(signal)"
        case .disconnected(let reason): "connection lost (\(reason))"
        }
    }
}

extension GuestSession {
    public func exec(_ command: String, output: @escaping @Sendable (OutputChunk) -> Void = { _ in }) async throws(KilnError) -> ExecResult {
        try await exec(command, stdin: nil, output: output)
    }

    /// Runs a command and collects its standard output; fails unless it exits 0.
    public func run(_ command: String) async throws(KilnError) -> String {
        let collector = OutputCollector()
        let result = try await exec(command, stdin: nil) { collector.append($0) }
        guard result.succeeded else {
            throw KilnError(.external, "`\(command)` in the guest ended with \(result): \(collector.stderrText.suffix(500))")
        }
        return collector.stdoutText
    }
}

/// Gathers a command's output (thread-safe).
public final class OutputCollector: @unchecked Sendable {
    private let lock = NSLockLike()
    private var stdout: [UInt8] = []
    private var stderr: [UInt8] = []

    public init() {}

    public func append(_ chunk: OutputChunk) {
        lock.withLock {
            switch chunk.stream {
            case .stdout: stdout += chunk.bytes
            case .stderr: stderr += chunk.bytes
            }
        }
    }

    public var stdoutText: String { lock.withLock { String(decoding: stdout, as: UTF8.self) } }
    public var stderrText: String { lock.withLock { String(decoding: stderr, as: UTF8.self) } }
}
