import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// An IP address and port in network byte order, read from the raw `sockaddr` bytes the kernel gives
/// (`getsockopt(SO_ORIGINAL_DST)`) or from a NIO `SocketAddress`.
///
/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a dual-stack `[::]` listener sees for IPv4
/// clients) is read as the IPv4 address it carries, so both spellings compare equal and the proxy
/// connects over IPv4.
///
/// An IPv6 link-local address (`fe80::/10`) means something only on one interface, so it keeps the
/// interface the kernel gave with it (`sin6_scope_id`); without it a connect fails with `EINVAL`.
struct IPEndpoint: Hashable, Sendable, CustomStringConvertible {
    /// 4 bytes (IPv4) or 16 bytes (IPv6).
    var address: [UInt8]
    var port: UInt16
    /// The interface index of an IPv6 link-local address (`sin6_scope_id`); 0 for none.
    var scopeID: UInt32

    init(address: [UInt8], port: UInt16, scopeID: UInt32 = 0) {
        precondition(address.count == 4 || address.count == 16, "an IP address has 4 or 16 bytes")
        if address.count == 16, address[0..<10].allSatisfy({ $0 == 0 }), address[10] == 0xFF, address[11] == 0xFF {
            self.address = Array(address[12..<16])
        } else {
            self.address = address
        }
        self.port = port
        self.scopeID = self.address.count == 16 ? scopeID : 0
    }

    /// Reads a `struct sockaddr_in` or `struct sockaddr_in6`; `nil` for another family or too few bytes.
    init?(sockaddr bytes: [UInt8]) {
        let parsed: IPEndpoint? = bytes.withUnsafeBytes { raw in
            guard raw.count >= MemoryLayout<sockaddr>.size else { return nil }
            let family = Int32(raw.loadUnaligned(as: sockaddr.self).sa_family)
            if family == AF_INET, raw.count >= MemoryLayout<sockaddr_in>.size {
                let address = raw.loadUnaligned(as: sockaddr_in.self)
                let ip = withUnsafeBytes(of: address.sin_addr) { Array($0) }
                return IPEndpoint(address: ip, port: UInt16(bigEndian: address.sin_port))
            }
            if family == AF_INET6, raw.count >= MemoryLayout<sockaddr_in6>.size {
                let address = raw.loadUnaligned(as: sockaddr_in6.self)
                let ip = withUnsafeBytes(of: address.sin6_addr) { Array($0) }
                return IPEndpoint(address: ip, port: UInt16(bigEndian: address.sin6_port), scopeID: address.sin6_scope_id)
            }
            return nil
        }
        guard let parsed else { return nil }
        self = parsed
    }

    /// The endpoint of an IPv4 or IPv6 `SocketAddress`; `nil` for a Unix socket address.
    init?(_ socketAddress: SocketAddress) {
        switch socketAddress {
        case .v4, .v6:
            let bytes = socketAddress.withSockAddr { pointer, size in
                Array(UnsafeRawBufferPointer(start: pointer, count: size))
            }
            self.init(sockaddr: bytes)
        default:
            return nil
        }
    }

    var isIPv4: Bool { self.address.count == 4 }

    /// `0.0.0.0` or `::`: a listener bound here accepts on every local address.
    var isUnspecified: Bool { self.address.allSatisfy { $0 == 0 } }

    /// `127.0.0.0/8` or `::1`: always this host.
    var isLoopback: Bool {
        self.isIPv4 ? self.address[0] == 127 : self.address == [UInt8](repeating: 0, count: 15) + [1]
    }

    /// `fe80::/10`: valid on one link only, so it needs a ``scopeID`` to be reached.
    var isLinkLocal: Bool {
        !self.isIPv4 && self.address[0] == 0xFE && self.address[1] & 0xC0 == 0x80
    }

    /// The same endpoint with another port (`0` lets the kernel pick one).
    func with(port: UInt16) -> IPEndpoint {
        IPEndpoint(address: self.address, port: port, scopeID: self.scopeID)
    }

    /// A link-local address without its interface takes `other`'s: an original destination may come
    /// without one, while the accepted socket's link-local addresses carry the interface the client came
    /// in on, which is the link the destination is on.
    func scoped(like other: IPEndpoint?) -> IPEndpoint {
        guard self.isLinkLocal, self.scopeID == 0, let other, other.scopeID != 0 else { return self }
        return IPEndpoint(address: self.address, port: self.port, scopeID: other.scopeID)
    }

    /// The NIO address, for connecting and binding; NIO writes its text form (inet_ntop), and only an
    /// IPv6 scope is set by hand.
    var socketAddress: SocketAddress {
        // Cannot throw: the address has 4 or 16 bytes (checked at init).
        let plain = try! SocketAddress(packedIPAddress: ByteBuffer(bytes: self.address), port: Int(self.port))
        guard self.scopeID != 0, case .v6(let v6) = plain else { return plain }
        var address = v6.address
        address.sin6_scope_id = self.scopeID
        return SocketAddress(address, host: plain.ipAddress ?? "")
    }

    /// `10.0.0.1:80`, `[fd00::1]:80`, `[fe80::1%eth0]:80`: as logs write any address.
    var description: String { self.socketAddress.logDescription }
}
