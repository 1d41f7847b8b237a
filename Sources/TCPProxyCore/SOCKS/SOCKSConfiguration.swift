import NIOCore

/// What a `socks` listener needs beyond the common options (SPEC §3 socks).
public struct SOCKSConfiguration: Sendable, Hashable {
    /// `--users`: when set, SOCKS5 clients must log in (RFC 1929) and SOCKS4 clients, who cannot, are refused.
    public var users: SOCKSUsers?
    /// `--handshake-timeout`: a client that has not sent a complete request by then is closed.
    public var handshakeTimeout: TimeAmount
    /// `--deny-destination`: networks no client may reach, checked on the addresses a name resolves to.
    public var denyDestinations: [CIDR]

    /// - Parameters:
    ///   - users: who may log in; `nil` for no authentication.
    ///   - handshakeTimeout: how long a client may take to send its request.
    ///   - denyDestinations: networks no client may reach.
    public init(users: SOCKSUsers? = nil, handshakeTimeout: TimeAmount = .seconds(10), denyDestinations: [CIDR] = []) {
        self.users = users
        self.handshakeTimeout = handshakeTimeout
        self.denyDestinations = denyDestinations
    }

    /// Whether a client may be connected to `address`: not in a denied network, and not an unspecified
    /// address (`0.0.0.0/8`, `::`), which Linux would connect to this host.
    func allows(_ address: SocketAddress) -> Bool {
        guard let bytes = CIDR.bytes(of: address) else { return false }
        var ipv4: ArraySlice<UInt8>? = bytes.count == 4 ? bytes[...] : nil
        if bytes.count == 16, bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xff, bytes[11] == 0xff {
            ipv4 = bytes[12..<16]
        }
        if let ipv4, ipv4.first == 0 { return false }
        if bytes.count == 16, bytes.allSatisfy({ $0 == 0 }) { return false }
        return !self.denyDestinations.contains { $0.contains(address) }
    }
}
