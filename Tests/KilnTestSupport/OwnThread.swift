import Foundation

/// Blocking work in a test (waiting for a child process, reading its pipes to the end) runs on a thread of its own.
/// Swift Testing runs every test, synchronous ones too, on the Swift concurrency pool, which has as many threads as
/// the host has cores: two on the CI machines. Two tests blocking those threads for seconds stall every other test
/// in the process, and a test that measures time (a WinRM operation timeout, a cancel bound) then fails for want of
/// a thread, not for anything the code under test did: CI saw `kiln doctor --connect` runs (15 s) beside the WinRM
/// client's operation-timeout test.
public enum OwnThread {
    public static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            Thread { continuation.resume(with: Result { try body() }) }.start()
        }
    }
}
