import Foundation

/// Byte sizes as people write them: `20G`, `512M`, `1.5T`, `4096` (binary units).
public enum ByteSize {
    public static func parse(_ text: String) -> UInt64? {
        let trimmed = text.trimmingCharacters(in: .whitespaces).uppercased().replacingOccurrences(of: "IB", with: "").replacingOccurrences(of: "B", with: "")
        guard let last = trimmed.last else { return nil }
        let units: [Character: Double] = ["K": 1024, "M": 1024 * 1024, "G": 1024 * 1024 * 1024, "T": 1024 * 1024 * 1024 * 1024]
        let multiplier = units[last] ?? 1
        let number = units[last] == nil ? trimmed : String(trimmed.dropLast())
        guard let value = Double(number), value >= 0, value.isFinite else { return nil }
        return UInt64(value * multiplier)
    }

    public static func format(_ bytes: UInt64) -> String {
        let value = Double(bytes)
        if value >= 1024 * 1024 * 1024 { return String(format: "%.1f GiB", value / (1024 * 1024 * 1024)) }
        if value >= 1024 * 1024 { return String(format: "%.0f MiB", value / (1024 * 1024)) }
        if value >= 1024 { return String(format: "%.0f KiB", value / 1024) }
        return "\(bytes) B"
    }
}

/// Ages as people write them for cache pruning: `7d`, `12h`, `30m`, `1d12h`.
public enum AgeText {
    public static func parse(_ text: String) -> Duration? {
        var rest = Substring(text.trimmingCharacters(in: .whitespaces))
        var days: Duration?
        if let d = rest.firstIndex(of: "d") {
            guard let value = Double(rest[..<d]) else { return nil }
            days = .seconds(value * 86400)
            rest = rest[rest.index(after: d)...]
        }
        if rest.isEmpty { return days }
        guard let remainder = DurationText.parse(String(rest)) else { return nil }
        return (days ?? .zero) + remainder
    }
}
