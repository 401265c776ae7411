/// The run's log as the code below the build engine writes to it (the customizers, distribution): lines under a
/// prefix (a step's label, `deprovision`, `distribute`), and the lines AIB's customization.log carries from Packer.
/// The build engine's `CustomizationLog` writes them to the run's customization.log; the customizers and
/// distribution are handed one and never reach up to the engine for it.
public protocol BuildLog: Sendable {
    func write(_ prefix: String, _ message: String)
    /// A line of Packer's user interface: a message or standard error, or (`stdout`) standard output.
    func packerUI(_ prefix: String, _ text: String, stdout: Bool)
    /// A line of Packer's debug log.
    func packerDebug(_ prefix: String, _ text: String)
}

extension BuildLog {
    public func packerUI(_ prefix: String, _ text: String) {
        packerUI(prefix, text, stdout: false)
    }
}

/// What the code below the build engine reports while it runs (a customizer, distribution), for the person
/// watching; the build engine turns each into its own event.
public enum ProgressEvent: Sendable {
    case message(String)
    case warning(String)
    /// A line of a step's output, under the step's label.
    case output(customizer: String, stream: String, line: String)
}
