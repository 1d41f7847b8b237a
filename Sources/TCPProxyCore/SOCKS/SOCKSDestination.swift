import NIOCore

/// A SOCKS command: the same values in SOCKS4 (`CD`) and SOCKS5 (RFC 1928 §4 `CMD`).
struct SOCKSCommand: Hashable, Sendable, CustomStringConvertible {
    /// Open a TCP connection to the destination.
    static let connect = SOCKSCommand(value: 0x01)
    /// Accept one connection from the destination (FTP's active mode); not supported.
    static let bind = SOCKSCommand(value: 0x02)
    /// SOCKS5 only: relay UDP datagrams; not supported.
    static let udpAssociate = SOCKSCommand(value: 0x03)

    /// The byte on the wire.
    var value: UInt8

    var description: String {
        switch self {
        case .connect: "connect"
        case .bind: "bind"
        case .udpAssociate: "udp-associate"
        default: "command-\(self.value)"
        }
    }
}

/// Where a client asks to go: an address, or a name the proxy resolves (SOCKS4a, SOCKS5 `DOMAINNAME`).
enum SOCKSDestination: Hashable, Sendable, CustomStringConvertible {
    /// An IPv4 or IPv6 address and port.
    case address(SocketAddress)
    /// A host name and port.
    case name(String, port: Int)

    /// The most bytes in a host name: SOCKS5 carries its length in one byte, and SOCKS4a uses the same bound.
    static let maximumHostNameLength = 255

    /// A host name from the wire, if it is one: 1 to 255 printable ASCII bytes, no spaces, no control bytes.
    /// A NUL or a newline would otherwise reach the resolver (and the log) as part of a name.
    static func hostName(_ bytes: [UInt8]) -> String? {
        guard (1...Self.maximumHostNameLength).contains(bytes.count),
            bytes.allSatisfy({ (0x21...0x7E).contains($0) })
        else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The port asked for.
    var port: Int {
        switch self {
        case .address(let address): address.port ?? 0
        case .name(_, let port): port
        }
    }

    /// The address a host name spells, if it is an address literal: `127.0.0.1`, `::1`, or `[::1]` (a client
    /// may bracket an IPv6 address as a URL does). Such a name is connected to as it is, never resolved.
    static func literalAddress(_ host: String, port: Int) -> SocketAddress? {
        let bracketed = host.hasPrefix("[") && host.hasSuffix("]") && host.contains(":")
        return try? SocketAddress(ipAddress: bracketed ? String(host.dropFirst().dropLast()) : host, port: port)
    }

    /// `host:port`, with brackets around an IPv6 address.
    var description: String {
        switch self {
        case .address(let address): address.logDescription
        case .name(let host, let port):
            Self.literalAddress(host, port: port)?.logDescription ?? Endpoint(host: host, port: port).description
        }
    }
}
