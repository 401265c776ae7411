import Foundation
import KilnSupport
#if canImport(Glibc)
import Glibc
#endif

/// Writes a line to standard error (file descriptor 2, unbuffered), never cut into by another thread's line.
func printError(_ line: String) {
    LineWriter.standardError.write(line)
}

/// Prints `value` as pretty, key-sorted JSON with ISO 8601 dates (the `--json` of list commands).
func printJSON<T: Encodable>(_ value: T) throws {
    print(String(decoding: try RecordFile.encode(value), as: UTF8.self))
}
