import Foundation
import KilnGuest
import KilnSupport

/// Splits streamed output into lines per stream, so each line can be logged with its customizer's name.
final class LineSplitter: @unchecked Sendable {
    private var pending: [String: [UInt8]] = [:]
    private let lock = NSLock()

    func feed(_ stream: String, _ bytes: [UInt8]) -> [String] {
        lock.lock()
        defer { lock.unlock() }
        var buffer = (pending[stream] ?? []) + bytes
        var lines: [String] = []
        while let newline = buffer.firstIndex(of: 0x0A) {
            lines.append(String(decoding: buffer[..<newline], as: UTF8.self).replacingOccurrences(of: "\r", with: ""))
            buffer.removeSubrange(...newline)
        }
        pending[stream] = buffer
        return lines
    }

    func flush() -> [(String, String)] {
        lock.lock()
        defer { lock.unlock() }
        let rest = pending.compactMap { stream, bytes in bytes.isEmpty ? nil : (stream, String(decoding: bytes, as: UTF8.self)) }
        pending.removeAll()
        return rest
    }
}

/// A command's streamed output: each line to the log and the event stream under the customizer's name, the last
/// lines kept for a failure message.
final class StepOutput: @unchecked Sendable {
    private let tail = OutputTail(lines: 20)
    private let splitter = LineSplitter()
    private let label: String
    private let log: any BuildLog
    private let events: @Sendable (ProgressEvent) -> Void

    /// Runs `command` on `session` with its output streamed under `label`: the result and the output's last lines.
    /// `stdin` nil leaves the command's standard input open; `[]` gives it end-of-file at once, as Packer's
    /// communicators do, so that a command that asks a question fails instead of waiting for the build timeout.
    static func exec(_ command: String, on session: any GuestSession, stdin: [UInt8]? = nil, label: String, log: any BuildLog,
                     events: @escaping @Sendable (ProgressEvent) -> Void) async throws(KilnError) -> (result: ExecResult, tail: OutputTail) {
        let output = StepOutput(label: label, log: log, events: events)
        let result = try await session.exec(command, stdin: stdin) { output.feed($0.stream.rawValue, $0.bytes) }
        output.finish()
        return (result, output.tail)
    }

    private init(label: String, log: any BuildLog, events: @escaping @Sendable (ProgressEvent) -> Void) {
        self.label = label
        self.log = log
        self.events = events
    }

    private func feed(_ stream: String, _ bytes: [UInt8]) {
        for line in splitter.feed(stream, bytes) { emit(stream, line) }
    }

    /// Emits a last line without its newline, if any.
    private func finish() {
        for (stream, rest) in splitter.flush() { emit(stream, rest) }
    }

    private func emit(_ stream: String, _ line: String) {
        tail.append(line)
        log.packerUI(label, line, stdout: stream == OutputChunk.Stream.stdout.rawValue)
        events(.output(customizer: label, stream: stream, line: line))
    }
}
