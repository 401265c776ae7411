/// Parses and prints durations the way Packer and AIB write them: "5m", "2h", "90s", "1h30m", "1.5h".
public enum DurationText {
    /// Returns nil when `text` is not one or more `<number><unit>` groups with units h, m or s.
    public static func parse(_ text: String) -> Duration? {
        let scalars = Array(text.unicodeScalars)
        guard !scalars.isEmpty else { return nil }
        var index = 0
        var totalMilliseconds: Double = 0
        while index < scalars.count {
            var number = ""
            while index < scalars.count, ("0"..."9").contains(scalars[index]) || scalars[index] == "." {
                number.unicodeScalars.append(scalars[index])
                index += 1
            }
            guard !number.isEmpty, let value = Double(number), index < scalars.count else { return nil }
            let unitMilliseconds: Double
            switch scalars[index] {
            case "h": unitMilliseconds = 3_600_000
            case "m": unitMilliseconds = 60_000
            case "s": unitMilliseconds = 1_000
            default: return nil
            }
            index += 1
            totalMilliseconds += value * unitMilliseconds
        }
        return .milliseconds(Int64(totalMilliseconds.rounded()))
    }

    /// "4m0s", "1h2m3s", "12.5s": short and unambiguous, in the style of Go's time.Duration.
    public static func format(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        let totalMilliseconds = seconds * 1000 + attoseconds / 1_000_000_000_000_000
        if totalMilliseconds < 60_000 {
            let whole = totalMilliseconds / 1000
            let tenths = (totalMilliseconds % 1000) / 100
            return tenths == 0 ? "\(whole)s" : "\(whole).\(tenths)s"
        }
        let totalSeconds = totalMilliseconds / 1000
        let hours = totalSeconds / 3600
        let minutes = (totalSeconds % 3600) / 60
        let secs = totalSeconds % 60
        return hours > 0 ? "\(hours)h\(minutes)m\(secs)s" : "\(minutes)m\(secs)s"
    }
}

extension Duration {
    /// The duration in seconds, as a Double (for printing figures and JSON).
    public var inSeconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}
