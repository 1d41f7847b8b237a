import NIOCore

/// A PROXY protocol header (haproxy.org's proxy-protocol.txt): who the real client is, and where it
/// connected, passed from one proxy to the next in front of the payload.
public struct ProxyHeader: Hashable, Sendable {
    /// What the header says about the connection.
    public enum Addresses: Hashable, Sendable {
        /// A proxied TCP connection: the client's address and the address it connected to.
        case tcp(source: SocketAddress, destination: SocketAddress)
        /// The sender does not say (v1 `UNKNOWN`, v2 `LOCAL` or an unsupported family): use the
        /// connection's own addresses.
        case unknown
    }

    /// The addresses carried.
    public var addresses: Addresses

    public init(addresses: Addresses) {
        self.addresses = addresses
    }

    /// A header for a TCP connection from `source` to `destination`; `unknown` if the two are not of the
    /// same IP family.
    public init(source: SocketAddress, destination: SocketAddress) {
        switch (source, destination) {
        case (.v4, .v4), (.v6, .v6): self.addresses = .tcp(source: source, destination: destination)
        default: self.addresses = .unknown
        }
    }

    /// The same, `unknown` when either address is not known.
    init(source: SocketAddress?, destination: SocketAddress?) {
        guard let source, let destination else {
            self.init(addresses: .unknown)
            return
        }
        self.init(source: source, destination: destination)
    }

    /// The client's address, when the header gives one.
    public var source: SocketAddress? {
        if case .tcp(let source, _) = self.addresses { return source }
        return nil
    }

    /// The address the client connected to, when the header gives one.
    public var destination: SocketAddress? {
        if case .tcp(_, let destination) = self.addresses { return destination }
        return nil
    }
}

/// The PROXY protocol versions `--proxy-protocol` can send.
public enum ProxyProtocolVersion: String, Sendable, Hashable, CaseIterable {
    /// The human-readable text header.
    case v1
    /// The binary header.
    case v2
}

extension ByteBuffer {
    /// Writes `header` as `version` says (`--proxy-protocol`).
    @discardableResult
    mutating func writeProxyHeader(_ header: ProxyHeader, _ version: ProxyProtocolVersion) -> Int {
        switch version {
        case .v1: self.writeProxyHeaderV1(header)
        case .v2: self.writeProxyHeaderV2(header)
        }
    }
}

/// A PROXY header that can never be valid. The connection that sent it is closed.
public enum ProxyHeaderError: Error, Hashable, CustomStringConvertible {
    /// Neither the v1 `PROXY ` prefix nor the v2 signature.
    case notAProxyHeader
    /// A v1 line longer than 107 bytes, or a v2 header longer than the limit.
    case tooLong(Int)
    /// A v1 line that does not follow the grammar.
    case malformedV1(String)
    /// A v2 header with a bad version, command, family or length.
    case malformedV2(String)

    public var description: String {
        switch self {
        case .notAProxyHeader: "not a PROXY protocol header"
        case .tooLong(let length): "PROXY header too long (\(length) bytes)"
        case .malformedV1(let why): "malformed PROXY v1 header: \(why)"
        case .malformedV2(let why): "malformed PROXY v2 header: \(why)"
        }
    }
}
