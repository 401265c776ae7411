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
