import KilnSupport

/// What a step tells the runner: go on with the next step, or end the build here as a success (a
/// sourceValidationOnly build ends after its validation).
enum StepAction: Sendable {
    case proceed
    case halt
}

/// One step of a build, as in Packer's multistep: `run` does the step's work; `cleanup` undoes what it started,
/// best-effort and idempotent. The engine cleans up every step that ran, newest first, once the build has ended
/// (succeeded, failed, cancelled or timed out), outside the task the build's deadline cancels.
protocol BuildStep: Sendable {
    /// The step's name in the pipeline (`boot`, `customize[2]`, …).
    var name: String { get }
    func run(_ build: BuildEngine, _ state: BuildState) async throws -> StepAction
    func cleanup(_ build: BuildEngine) async
}

extension BuildStep {
    func cleanup(_ build: BuildEngine) async {}
}

/// Runs steps in order, checking for a cancel before each, and keeps the ones that ran so that `cleanup` undoes
/// them in reverse.
final class StepSequence: Sendable {
    private let ran = Locked<[any BuildStep]>([])

    /// Runs `steps` after the ones run before; false when a step halted the build.
    func run(_ steps: [any BuildStep], on build: BuildEngine, state: BuildState) async throws -> Bool {
        for step in steps {
            try Task.checkCancellation()
            ran.withLock { $0.append(step) }
            if try await step.run(build, state) == .halt { return false }
        }
        return true
    }

    /// Cleans up every step that ran, newest first; each once.
    func cleanup(_ build: BuildEngine) async {
        let steps = ran.withLock { steps -> [any BuildStep] in
            defer { steps.removeAll() }
            return steps
        }
        for step in steps.reversed() { await step.cleanup(build) }
    }
}
