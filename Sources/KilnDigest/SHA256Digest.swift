import COpenSSL
import CKilnShim
import KilnSupport
#if canImport(Glibc)
import Glibc
#endif

/// Streaming SHA-256 through OpenSSL's EVP interface. Files of any size are hashed in fixed-size chunks.
public final class SHA256Digest {
    private var context: OpaquePointer?
    private var finished = false

    public init() throws(KilnError) {
        guard let context = EVP_MD_CTX_new() else {
            throw KilnError(.external, "OpenSSL could not allocate a digest context")
        }
        guard EVP_DigestInit_ex(context, EVP_sha256(), nil) == 1 else {
            EVP_MD_CTX_free(context)
            throw KilnError(.external, "OpenSSL could not initialise SHA-256: \(SHA256Digest.lastOpenSSLError())")
        }
        self.context = context
    }

    deinit {
        EVP_MD_CTX_free(context)
    }

    public func update(_ bytes: UnsafeRawBufferPointer) throws(KilnError) {
        guard !finished else { throw KilnError(.invalidState, "SHA-256 digest already finished") }
        guard bytes.count > 0 else { return }
        guard EVP_DigestUpdate(context, bytes.baseAddress, bytes.count) == 1 else {
            throw KilnError(.external, "OpenSSL SHA-256 update failed: \(SHA256Digest.lastOpenSSLError())")
        }
    }

    public func update(_ bytes: [UInt8]) throws(KilnError) {
        guard !finished else { throw KilnError(.invalidState, "SHA-256 digest already finished") }
        let ok = bytes.withUnsafeBytes { buffer in
            buffer.count == 0 || EVP_DigestUpdate(context, buffer.baseAddress, buffer.count) == 1
        }
        guard ok else { throw KilnError(.external, "OpenSSL SHA-256 update failed: \(SHA256Digest.lastOpenSSLError())") }
    }

    /// The digest as 64 lower-case hex digits.
    public func finish() throws(KilnError) -> String {
        guard !finished else { throw KilnError(.invalidState, "SHA-256 digest already finished") }
        finished = true
        var output = [UInt8](repeating: 0, count: Int(kiln_evp_max_md_size()))
        var length: UInt32 = 0
        guard EVP_DigestFinal_ex(context, &output, &length) == 1, length == 32 else {
            throw KilnError(.external, "OpenSSL SHA-256 final failed: \(SHA256Digest.lastOpenSSLError())")
        }
        return output.prefix(Int(length)).map { byte in
            let hex = String(byte, radix: 16)
            return byte < 16 ? "0" + hex : hex
        }.joined()
    }

    public static func hex(of bytes: [UInt8]) throws(KilnError) -> String {
        let digest = try SHA256Digest()
        try digest.update(bytes)
        return try digest.finish()
    }

    public static func hex(of text: String) throws(KilnError) -> String {
        try hex(of: Array(text.utf8))
    }

    /// Hashes a file in 1 MiB chunks; memory use does not grow with the file.
    public static func hex(ofFile path: String) throws(KilnError) -> String {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw KilnError(.io, "cannot open \(path) to compute its SHA-256: \(String(cString: strerror(errno)))")
        }
        defer { close(descriptor) }
        let digest = try SHA256Digest()
        let chunkSize = 1 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let count = read(descriptor, buffer.baseAddress, chunkSize)
            if count < 0 {
                if errno == EINTR { continue }
                throw KilnError(.io, "cannot read \(path) to compute its SHA-256: \(String(cString: strerror(errno)))")
            }
            if count == 0 { break }
            try digest.update(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
        }
        return try digest.finish()
    }

    /// "OpenSSL 3.0.x …" as the library reports itself at run time.
    public static var libraryVersion: String {
        String(cString: OpenSSL_version(OPENSSL_VERSION))
    }

    /// The version of the headers Kiln was built against.
    public static var headerVersion: String {
        String(cString: kiln_openssl_version_text())
    }

    static func lastOpenSSLError() -> String {
        let code = ERR_get_error()
        guard code != 0 else { return "no OpenSSL error recorded" }
        var buffer = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &buffer, buffer.count)
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// Compares a computed sum with an expected one, as AIB users write them: case-insensitive hex.
public enum ChecksumCheck {
    public static func matches(expected: String, actual: String) -> Bool {
        expected.lowercased() == actual.lowercased()
    }
}
