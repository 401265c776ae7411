/// The hashes behind ARM's `uniqueString()` and `guid()`.
///
/// uniqueString: the arguments joined with "-", hashed as UTF-8 with the deployment engine's 64-bit MurmurHash (two
/// 32-bit lanes, seed 0), and the hash's 65 bits from the top written as 13 characters of the lower-case RFC 4648 base32
/// alphabet. Documented at https://learn.microsoft.com/azure/azure-resource-manager/templates/template-functions-string#uniquestring
/// ("a 13 character deterministic hash"); the algorithm is the one in the engine's published expression evaluator
/// (Azure.Deployments.Expression, ExpressionBuiltInFunctions.UniqueString / ComputeHash.MurmurHash64). A value
/// measured on Azure checks it in the tests.
///
/// guid: an RFC 4122 version 5 (SHA-1) UUID of the arguments joined with "-" in the namespace
/// 11fb06fb-712d-4ddd-98c7-e71bbd588830 (ExpressionBuiltInFunctions.ARMNamespaceGuid), lower case.
enum ARMHash {
    static func uniqueString(_ parts: [String]) -> String {
        base32(murmurHash64(Array(parts.joined(separator: "-").utf8)))
    }

    static func guid(_ parts: [String]) -> String {
        let namespace: [UInt8] = [0x11, 0xfb, 0x06, 0xfb, 0x71, 0x2d, 0x4d, 0xdd, 0x98, 0xc7, 0xe7, 0x1b, 0xbd, 0x58, 0x88, 0x30]
        var hash = Array(sha1(namespace + Array(parts.joined(separator: "-").utf8)).prefix(16))
        hash[6] = (hash[6] & 0x0F) | 0x50
        hash[8] = (hash[8] & 0x3F) | 0x80
        let hex = hash.map { byte in
            let text = String(byte, radix: 16)
            return text.count == 1 ? "0" + text : text
        }.joined()
        let characters = Array(hex)
        let groups = [0..<8, 8..<12, 12..<16, 16..<20, 20..<32]
        return groups.map { String(characters[$0]) }.joined(separator: "-")
    }

    static func base32(_ value: UInt64) -> String {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz234567")
        var input = value
        var output = ""
        for _ in 0..<13 {
            output.append(alphabet[Int(input >> 59)])
            input <<= 5
        }
        return output
    }

    private static func rotateLeft(_ value: UInt32, _ count: UInt32) -> UInt32 {
        (value << count) | (value >> (32 - count))
    }

    private static func word(_ data: [UInt8], _ start: Int, _ count: Int) -> UInt32 {
        var value: UInt32 = 0
        for offset in 0..<count { value |= UInt32(data[start + offset]) << (8 * UInt32(offset)) }
        return value
    }

    static func murmurHash64(_ data: [UInt8]) -> UInt64 {
        let c1: UInt32 = 0x239b_961b, c2: UInt32 = 0xab0e_9789
        let c3: UInt32 = 0x561c_cd1b, c4: UInt32 = 0x0bca_a747
        let c5: UInt32 = 0x85eb_ca6b, c6: UInt32 = 0xc2b2_ae35
        var h1: UInt32 = 0, h2: UInt32 = 0
        var index = 0
        while index + 7 < data.count {
            var k1 = word(data, index, 4), k2 = word(data, index + 4, 4)
            k1 = rotateLeft(k1 &* c1, 15) &* c2
            h1 = (rotateLeft(h1 ^ k1, 19) &+ h2) &* 5 &+ c3
            k2 = rotateLeft(k2 &* c2, 17) &* c1
            h2 = (rotateLeft(h2 ^ k2, 13) &+ h1) &* 5 &+ c4
            index += 8
        }
        let tail = data.count - index
        if tail > 0 {
            let k1 = word(data, index, min(tail, 4))
            h1 ^= rotateLeft(k1 &* c1, 15) &* c2
            if tail > 4 {
                let k2 = word(data, index + 4, tail - 4)
                h2 ^= rotateLeft(k2 &* c2, 17) &* c1
            }
        }
        h1 ^= UInt32(truncatingIfNeeded: data.count)
        h2 ^= UInt32(truncatingIfNeeded: data.count)
        h1 = h1 &+ h2
        h2 = h2 &+ h1
        func mix(_ value: UInt32) -> UInt32 {
            var h = value
            h ^= h >> 16
            h = h &* c5
            h ^= h >> 13
            h = h &* c6
            h ^= h >> 16
            return h
        }
        h1 = mix(h1)
        h2 = mix(h2)
        h1 = h1 &+ h2
        h2 = h2 &+ h1
        return (UInt64(h2) << 32) | UInt64(h1)
    }

    /// FIPS 180-4 SHA-1, for guid() only (the template module links no crypto library).
    static func sha1(_ message: [UInt8]) -> [UInt8] {
        var h: [UInt32] = [0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0]
        var data = message
        let bitLength = UInt64(message.count) * 8
        data.append(0x80)
        while data.count % 64 != 56 { data.append(0) }
        for shift in stride(from: 56, through: 0, by: -8) { data.append(UInt8(truncatingIfNeeded: bitLength >> UInt64(shift))) }
        var w = [UInt32](repeating: 0, count: 80)
        for chunk in stride(from: 0, to: data.count, by: 64) {
            for i in 0..<16 {
                let base = chunk + i * 4
                w[i] = UInt32(data[base]) << 24 | UInt32(data[base + 1]) << 16 | UInt32(data[base + 2]) << 8 | UInt32(data[base + 3])
            }
            for i in 16..<80 { w[i] = rotateLeft(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1) }
            var a = h[0], b = h[1], c = h[2], d = h[3], e = h[4]
            for i in 0..<80 {
                let f: UInt32, k: UInt32
                switch i {
                case 0..<20: f = (b & c) | (~b & d); k = 0x5A82_7999
                case 20..<40: f = b ^ c ^ d; k = 0x6ED9_EBA1
                case 40..<60: f = (b & c) | (b & d) | (c & d); k = 0x8F1B_BCDC
                default: f = b ^ c ^ d; k = 0xCA62_C1D6
                }
                let temp = rotateLeft(a, 5) &+ f &+ e &+ k &+ w[i]
                e = d; d = c; c = rotateLeft(b, 30); b = a; a = temp
            }
            h[0] = h[0] &+ a; h[1] = h[1] &+ b; h[2] = h[2] &+ c; h[3] = h[3] &+ d; h[4] = h[4] &+ e
        }
        return h.flatMap { value in (0..<4).map { UInt8(truncatingIfNeeded: value >> (24 - 8 * UInt32($0))) } }
    }
}
