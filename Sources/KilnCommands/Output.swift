import Foundation
import KilnSupport
#if canImport(Glibc)
import Glibc
#endif

/// Writes a line to standard error (file descriptor 2, unbuffered).
func printError(_ line: String) {
    let text = line + "\n"
    var bytes = Array(text.utf8)[...]
    while !bytes.isEmpty {
        let written = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        if written < 0 { if errno == EINTR { continue }; return }
        bytes = bytes.dropFirst(written)
    }
}

/// Prints `value` as pretty, key-sorted JSON with ISO 8601 dates (the `--json` of list commands).
func printJSON<T: Encodable>(_ value: T) throws {
    print(String(decoding: try RecordFile.encode(value), as: UTF8.self))
}
