/// The known sizes nearest to a name Kiln does not know, for `kiln validate`'s warning and `kiln build`'s error.
///
/// Nearest means: the same family first (the letters of the size name after `Standard_`, such as `D`, `NC` or `E`,
/// compared without regard to case), then the smallest case-insensitive edit distance (Levenshtein) of the whole name,
/// then the name, so that the answer is deterministic.
extension AzureVMSize {
    public static func closest(to name: String, count: Int = 3) -> [String] {
        let wanted = name.lowercased()
        let family = AzureVMSize.family(of: wanted)
        let ranked = table.map { size -> (sameFamily: Bool, distance: Int, name: String) in
            let candidate = size.name.lowercased()
            return (AzureVMSize.family(of: candidate) == family, editDistance(Array(wanted.utf8), Array(candidate.utf8)), size.name)
        }
        return ranked.sorted { lhs, rhs in
            if lhs.sameFamily != rhs.sameFamily { return lhs.sameFamily }
            if lhs.distance != rhs.distance { return lhs.distance < rhs.distance }
            return lhs.name < rhs.name
        }.prefix(count).map(\.name)
    }

    /// `"X", which is not among the N Azure sizes Kiln knows (…); the closest known: A, B, C`, what the validate
    /// warning and the build error say they found.
    public static func unknownSizeDescription(_ name: String) -> String {
        "\"\(name)\", which is not among the \(table.count) Azure sizes Kiln knows (Sources/KilnTemplate/AzureVMSizes.swift names their sources); the closest known: \(closest(to: name).joined(separator: ", "))"
    }

    /// `standard_d4as_v6` → `d`, `standard_nc6s_v3` → `nc`, `basic_a1` → `a`; a name without the tier prefix is read
    /// from its start.
    static func family(of lowercasedName: String) -> String {
        var rest = Substring(lowercasedName)
        if let underscore = rest.firstIndex(of: "_"), rest[..<underscore].allSatisfy(\.isLetter) {
            rest = rest[rest.index(after: underscore)...]
        }
        return String(rest.prefix { $0.isLetter })
    }

    /// Levenshtein distance over bytes (size names are ASCII), one row at a time.
    static func editDistance(_ lhs: [UInt8], _ rhs: [UInt8]) -> Int {
        if lhs.isEmpty { return rhs.count }
        if rhs.isEmpty { return lhs.count }
        var previous = Array(0...rhs.count)
        var current = [Int](repeating: 0, count: rhs.count + 1)
        for (i, left) in lhs.enumerated() {
            current[0] = i + 1
            for (j, right) in rhs.enumerated() {
                current[j + 1] = Swift.min(previous[j + 1] + 1, current[j] + 1, previous[j] + (left == right ? 0 : 1))
            }
            swap(&previous, &current)
        }
        return previous[rhs.count]
    }
}
