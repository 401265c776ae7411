/// A JSON path in the form AIB users read in error messages: `properties.customize[2].name`.
public struct TemplatePath: Sendable, Hashable, CustomStringConvertible {
    public enum Component: Sendable, Hashable {
        case key(String)
        case index(Int)
    }

    public var components: [Component]

    public init(_ components: [Component] = []) {
        self.components = components
    }

    public static let root = TemplatePath()

    public func appending(_ key: String) -> TemplatePath {
        TemplatePath(components + [.key(key)])
    }

    public func appending(index: Int) -> TemplatePath {
        TemplatePath(components + [.index(index)])
    }

    public var description: String {
        var text = ""
        for component in components {
            switch component {
            case .key(let key):
                if !text.isEmpty { text += "." }
                text += key
            case .index(let index):
                text += "[\(index)]"
            }
        }
        return text.isEmpty ? "(document)" : text
    }
}

public struct Diagnostic: Sendable, Equatable, CustomStringConvertible {
    public enum Severity: String, Sendable {
        case error
        case warning
    }

    public var severity: Severity
    public var path: TemplatePath
    public var message: String
    public var position: SourcePosition?

    public init(_ severity: Severity, _ path: TemplatePath, _ message: String, at position: SourcePosition? = nil) {
        self.severity = severity
        self.path = path
        self.message = message
        self.position = position
    }

    /// `properties.customize[2].name: expected …, found … (line 14, column 7)`
    public var description: String {
        var text = "\(path): \(message)"
        if let position, position.line > 0 { text += " (\(position))" }
        return text
    }
}

/// Collects diagnostics while a template is read, so that every problem is reported, not just the first.
final class DiagnosticSink {
    private(set) var diagnostics: [Diagnostic] = []
    /// Set when the template's apiVersion is one for which Azure matches names and values exactly (2024-02-01,
    /// enforced since May 2024). Kiln still accepts other spellings, as real templates use them, but says so.
    var exactCaseAPIVersion: APIVersion?
    private var caseWarned: Set<TemplatePath> = []

    func caseMismatch(_ path: TemplatePath, written: String, canonical: String, what: String) {
        guard let version = exactCaseAPIVersion, written != canonical, caseWarned.insert(path).inserted else { return }
        warning(path, "Azure matches \(what) exactly for apiVersion \(version.rawValue): write \"\(canonical)\" instead of \"\(written)\" (Kiln accepts both)")
    }

    /// Paths whose value could not be evaluated (an ARM expression): that error is reported once, and what
    /// reading the unevaluated value would add is noise.
    private var poisoned: Set<TemplatePath> = []

    func poison(_ path: TemplatePath) { poisoned.insert(path) }

    func error(_ path: TemplatePath, _ message: String, at node: JSONNode? = nil) {
        guard !poisoned.contains(path) else { return }
        diagnostics.append(Diagnostic(.error, path, message, at: node?.position))
    }

    func warning(_ path: TemplatePath, _ message: String, at node: JSONNode? = nil) {
        diagnostics.append(Diagnostic(.warning, path, message, at: node?.position))
    }

    var hasErrors: Bool { diagnostics.contains { $0.severity == .error } }
}
