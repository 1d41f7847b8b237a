import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// An IP address as a captured packet carries it, in network order.
enum CaptureIPAddress: Hashable, Sendable {
    /// An IPv4 address: `a.b.c.d` is `a << 24 | b << 16 | c << 8 | d`.
    case v4(UInt32)
    /// An IPv6 address: the first and the last eight bytes, each read big-endian.
    case v6(high: UInt64, low: UInt64)

    /// The IPv6 form: itself, or `::ffff:a.b.c.d` for an IPv4 address (RFC 4291 §2.5.5.2).
    var mappedToIPv6: CaptureIPAddress {
        switch self {
        case .v4(let address): .v6(high: 0, low: 0x0000_FFFF_0000_0000 | UInt64(address))
        case .v6: self
        }
    }

    /// Whether this is an IPv4 address.
    var isIPv4: Bool {
        if case .v4 = self { return true }
        return false
    }
}

/// One end of a captured TCP conversation: an address and a port.
struct CaptureEndpoint: Hashable, Sendable {
    /// The IP address.
    var address: CaptureIPAddress
    /// The TCP port.
    var port: UInt16

    /// - Parameters:
    ///   - address: The IP address.
    ///   - port: The TCP port.
    init(address: CaptureIPAddress, port: UInt16) {
        self.address = address
        self.port = port
    }

    /// The endpoint of a socket address; a Unix domain socket, which has no IP address, becomes `0.0.0.0:0`.
    init(_ socketAddress: SocketAddress) {
        switch socketAddress {
        case .v4(let address):
            self.address = .v4(UInt32(bigEndian: address.address.sin_addr.s_addr))
        case .v6(let address):
            self.address = withUnsafeBytes(of: address.address.sin6_addr) { bytes in
                .v6(
                    high: UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self)),
                    low: UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
                )
            }
        case .unixDomainSocket:
            self.address = .v4(0)
        }
        self.port = UInt16(truncatingIfNeeded: socketAddress.port ?? 0)
    }

    /// The two ends of a conversation in one address family: as they are when both are IPv4 or both
    /// IPv6, both mapped to IPv6 otherwise (a packet has one IP version).
    /// - Parameters:
    ///   - first: One end.
    ///   - second: The other end.
    /// - Returns: The two ends, in the same order.
    static func sameFamily(
        _ first: CaptureEndpoint,
        _ second: CaptureEndpoint
    ) -> (CaptureEndpoint, CaptureEndpoint) {
        if first.address.isIPv4 == second.address.isIPv4 { return (first, second) }
        return (
            CaptureEndpoint(address: first.address.mappedToIPv6, port: first.port),
            CaptureEndpoint(address: second.address.mappedToIPv6, port: second.port)
        )
    }
}
