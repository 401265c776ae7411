import Foundation

/// Kiln's JSON record files (run.json, a checkpoint's meta.json, kept.json, the download index): pretty-printed,
/// keys sorted, dates in ISO 8601, written atomically.
public enum RecordFile {
    public static func encode<T: Encodable>(_ value: T) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        return try encoder.encode(value)
    }

    public static func write<T: Encodable>(_ value: T, to path: String) throws(KilnError) {
        let data: Data
        do {
            data = try encode(value)
        } catch {
            throw KilnError(.internalError, "cannot encode \(path): \(error)")
        }
        try AtomicFile.write(data, to: path)
    }

    /// nil when the file is missing or does not decode.
    public static func read<T: Decodable>(_ type: T.Type, from path: String) -> T? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try? decoder.decode(type, from: data)
    }
}
