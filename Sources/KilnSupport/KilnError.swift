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
}
