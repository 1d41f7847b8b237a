/// The Internet checksum of IPv4 headers and TCP segments (RFC 1071): the ones' complement of the ones'
/// complement sum of the data as big-endian 16-bit words.
///
/// Sums are kept wide (`UInt64`) and folded only at the end, so 32-bit words can be added in one step:
/// 2^16 ≡ 1 modulo 2^16 − 1, so a 32-bit word adds the same as its two halves.
enum InternetChecksum {
    /// Adds `bytes` to a running sum.
    /// - Parameters:
    ///   - bytes: Data that starts at an even offset of the checksummed data; an odd last byte is padded
    ///     with a zero byte, as RFC 1071 §1 asks.
    ///   - sum: The sum so far.
    /// - Returns: The new sum, not yet folded.
    static func add(_ bytes: UnsafeRawBufferPointer, to sum: UInt64) -> UInt64 {
        var sum = sum
        var offset = 0
        let count = bytes.count
        while offset + 4 <= count {
            sum &+= UInt64(UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self)))
            offset += 4
        }
        if offset + 2 <= count {
            sum &+= UInt64(bytes[offset]) << 8 | UInt64(bytes[offset + 1])
            offset += 2
        }
        if offset < count {
            sum &+= UInt64(bytes[offset]) << 8
        }
        return sum
    }

    /// Adds the address to a running sum, as a pseudo-header carries it.
    /// - Parameters:
    ///   - address: An IPv4 or IPv6 address.
    ///   - sum: The sum so far.
    /// - Returns: The new sum, not yet folded.
    static func add(_ address: CaptureIPAddress, to sum: UInt64) -> UInt64 {
        switch address {
        case .v4(let address):
            return sum &+ UInt64(address)
        case .v6(let high, let low):
            return sum &+ (high >> 32) &+ (high & 0xFFFF_FFFF) &+ (low >> 32) &+ (low & 0xFFFF_FFFF)
        }
    }

    /// Folds a running sum to 16 bits and complements it.
    /// - Parameter sum: The sum of every word.
    /// - Returns: The checksum field's value.
    static func finish(_ sum: UInt64) -> UInt16 {
        var sum = sum
        while sum >> 16 != 0 {
            sum = (sum & 0xFFFF) &+ (sum >> 16)
        }
        return ~UInt16(truncatingIfNeeded: sum)
    }
}
