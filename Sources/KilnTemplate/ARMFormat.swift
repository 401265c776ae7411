import Foundation

/// The .NET formatting ARM's functions inherit: composite format strings for format(), the URI joining rules of
/// uri(), and date format strings for utcNow().
enum ARMFormat {
    /// `{index[,alignment][:format]}` with `{{`/`}}` escapes (.NET composite formatting,
    /// https://learn.microsoft.com/dotnet/standard/base-types/composite-formatting, used by ARM's format():
    /// https://learn.microsoft.com/azure/azure-resource-manager/templates/template-functions-string#format).
    /// Integer format strings N, D and X are honoured; others print the value as string() would.
    static func composite(_ format: String, _ args: [JSONValue], fail: ARMEvaluator.Failure) throws(ARMEvaluator.Failure) -> String {
        var output = ""
        var characters = format[...]
        while let character = characters.first {
            characters = characters.dropFirst()
            if character == "}" {
                guard characters.first == "}" else { throw fail }
                characters = characters.dropFirst()
                output.append("}")
                continue
            }
            guard character == "{" else { output.append(character); continue }
            if characters.first == "{" {
                characters = characters.dropFirst()
                output.append("{")
                continue
            }
            guard let close = characters.firstIndex(of: "}") else { throw fail }
            let item = characters[..<close]
            characters = characters[characters.index(after: close)...]
            var spec = item.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            let formatString = spec.count > 1 ? String(spec.removeLast()) : ""
            let indexAndAlignment = spec[0].split(separator: ",", maxSplits: 1).map { $0.trimmingCharacters() }
            guard let index = Int(indexAndAlignment[0]), args.indices.contains(index) else { throw fail }
            var text = formatted(args[index], formatString)
            if indexAndAlignment.count > 1, let width = Int(indexAndAlignment[1]), abs(width) > text.count {
                let pad = String(repeating: " ", count: abs(width) - text.count)
                text = width > 0 ? pad + text : text + pad
            }
            output += text
        }
        return output
    }

    private static func formatted(_ value: JSONValue, _ format: String) -> String {
        guard let number = value.intValue, let kind = format.first?.uppercased() else { return ARMFunctions.text(value) }
        let digits = Int(format.dropFirst()) ?? (kind == "N" ? 2 : 0)
        switch kind {
        case "N":
            let magnitude = String(number.magnitude)
            var grouped = ""
            for (offset, digit) in magnitude.enumerated() {
                if offset > 0 && (magnitude.count - offset) % 3 == 0 { grouped.append(",") }
                grouped.append(digit)
            }
            let decimals = digits > 0 ? "." + String(repeating: "0", count: digits) : ""
            return (number < 0 ? "-" : "") + grouped + decimals
        case "D":
            let magnitude = String(number.magnitude)
            return (number < 0 ? "-" : "") + String(repeating: "0", count: max(0, digits - magnitude.count)) + magnitude
        case "X":
            let hex = String(UInt64(bitPattern: Int64(number)), radix: 16, uppercase: format.first == "X")
            return String(repeating: "0", count: max(0, digits - hex.count)) + hex
        default:
            return ARMFunctions.text(value)
        }
    }

    /// uri(baseUri, relativeUri), by the documented rules
    /// (https://learn.microsoft.com/azure/azure-resource-manager/templates/template-functions-string#uri): a base
    /// ending in "/" is followed by the relative part (one "/" where both have one); otherwise everything after the
    /// base's last "/" past the scheme's "//" is dropped first.
    static func uri(_ base: String, _ relative: String) -> String {
        if base.hasSuffix("/") {
            return relative.hasPrefix("/") ? base + String(relative.dropFirst()) : base + relative
        }
        let afterScheme = base.range(of: "//").map { base[$0.upperBound...] } ?? base[...]
        guard let lastSlash = afterScheme.lastIndex(of: "/") else {
            return relative.hasPrefix("/") ? base + relative : base + "/" + relative
        }
        let trimmed = String(base[...lastSlash])
        return relative.hasPrefix("/") ? trimmed + String(relative.dropFirst()) : trimmed + relative
    }

    /// A .NET date format string (standard "u", "d", "o", "s", or custom yyyy/MM/dd/HH/mm/ss/fff with quoted literals),
    /// in UTC. utcNow()'s default is "yyyyMMddTHHmmssZ".
    /// https://learn.microsoft.com/azure/azure-resource-manager/templates/template-functions-date#utcnow
    static func date(_ date: Date, format: String) -> String {
        let standard = ["u": "yyyy-MM-dd HH:mm:ss'Z'", "d": "M/d/yyyy", "o": "yyyy-MM-dd'T'HH:mm:ss.fffffff'Z'",
                        "O": "yyyy-MM-dd'T'HH:mm:ss.fffffff'Z'", "s": "yyyy-MM-dd'T'HH:mm:ss", "t": "h:mm tt", "T": "h:mm:ss tt"]
        let pattern = Array(standard[format] ?? format)
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC") ?? calendar.timeZone
        let parts = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second, .nanosecond], from: date)
        func padded(_ value: Int, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        var output = ""
        var index = 0
        while index < pattern.count {
            let character = pattern[index]
            var run = 1
            while index + run < pattern.count, pattern[index + run] == character { run += 1 }
            let hour = parts.hour ?? 0
            switch character {
            case "y": output += run <= 2 ? padded((parts.year ?? 0) % 100, run) : padded(parts.year ?? 0, run)
            case "M": output += padded(parts.month ?? 0, min(run, 2))
            case "d": output += padded(parts.day ?? 0, min(run, 2))
            case "H": output += padded(hour, min(run, 2))
            case "h": output += padded(hour % 12 == 0 ? 12 : hour % 12, min(run, 2))
            case "m": output += padded(parts.minute ?? 0, min(run, 2))
            case "s": output += padded(parts.second ?? 0, min(run, 2))
            case "f", "F": output += String(padded(parts.nanosecond ?? 0, 9).prefix(run))
            case "t": output += String((hour < 12 ? "AM" : "PM").prefix(run))
            case "'", "\"":
                var end = index + 1
                while end < pattern.count, pattern[end] != character { end += 1 }
                output += String(pattern[min(index + 1, pattern.count)..<min(end, pattern.count)])
                index = end + 1
                continue
            default: output += String(repeating: character, count: run)
            }
            index += run
        }
        return output
    }
}
