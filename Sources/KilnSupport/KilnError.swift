/// The one error type Kiln's libraries throw: a code a caller can switch on, a message a person can read,
/// and the underlying cause when there is one.
public struct KilnError: Error, CustomStringConvertible, Sendable {
    /// An extensible set of error kinds.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        public static let invalidArgument = Code("invalidArgument")
        public static let invalidTemplate = Code("invalidTemplate")
        public static let notFound = Code("notFound")
        public static let timeout = Code("timeout")
        public static let cancelled = Code("cancelled")
        public static let invalidState = Code("invalidState")
        public static let unsupported = Code("unsupported")
        public static let io = Code("io")
        public static let external = Code("external")
        public static let checksumMismatch = Code("checksumMismatch")
        public static let internalError = Code("internalError")
        /// Something with this name is there already (a libvirt domain another build runs).
        public static let alreadyExists = Code("alreadyExists")
        /// A port Kiln asked for is taken (QEMU could not set up a host forwarding rule).
        public static let portUnavailable = Code("portUnavailable")
        /// The guest presented a host key other than the one pinned.
        public static let hostKeyMismatch = Code("hostKeyMismatch")
        /// The guest refused the build key.
        public static let authenticationRejected = Code("authenticationRejected")
        /// The build ends as failed with this message, whatever else happens at the same moment: a cancel that
        /// arrives with it does not turn it into a cancelled build (a failed deprovisioning, a guest that did not
        /// power off, every distribution target failed).
        public static let buildFailed = Code("buildFailed")
    }

    public let code: Code
    public let message: String
    public let cause: (any Error & Sendable)?

    public init(_ code: Code, _ message: String, cause: (any Error & Sendable)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    public var description: String {
        guard let cause else { return message }
        return "\(message): \(cause)"
    }

    /// Whether this error, or one in its chain of causes, has `code`.
    public func hasCode(_ code: Code) -> Bool {
        if self.code == code { return true }
        return (cause as? KilnError)?.hasCode(code) ?? false
    }
}
