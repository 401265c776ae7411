import Dispatch

/// Work that blocks a thread (libguestfs launches, waiting for a child process) runs on a Dispatch thread, so the
/// cooperative pool (two threads on a 2-core host) stays free.
public enum Blocking {
    public static func run<T: Sendable>(_ body: @escaping @Sendable () throws(KilnError) -> T) async throws(KilnError) -> T {
        let outcome: Result<T, KilnError> = await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                do throws(KilnError) {
                    continuation.resume(returning: .success(try body()))
                } catch {
                    continuation.resume(returning: .failure(error))
                }
            }
        }
        return try outcome.get()
    }
}
