import NIOCore

/// An IPv4 or IPv6 network such as `10.0.0.0/8` or `::1/128`; a bare address is a host network.
public struct CIDR: Hashable, Sendable, CustomStringConvertible {
    /// The network address, 4 or 16 bytes, with the host bits cleared.
    public let network: [UInt8]
    /// The prefix length in bits.
    public let prefixLength: Int
    /// What the user wrote, when its address had bits set past the prefix (`1.2.3.4/8`): they are ignored,
    /// as nginx and HAProxy ignore them, and the listener warns. `nil` when the address is the network's.
    public let textWithHostBits: String?

    /// Parses `ADDRESS/PREFIX` or a bare `ADDRESS`.
    /// - Throws: ``CIDRError`` when the address or prefix is not valid.
    public init(parsing text: String) throws {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        let addressText = String(parts[0])
        guard let bytes = CIDR.addressBytes(addressText) else { throw CIDRError(text: text) }
        let maximum = bytes.count * 8
        var prefix = maximum
        if parts.count == 2 {
            guard let value = Int(parts[1]), (0...maximum).contains(value), parts[1].allSatisfy(\.isNumber) else {
                throw CIDRError(text: text)
            }
            prefix = value
        }
        self.prefixLength = prefix
        self.network = CIDR.masked(bytes, prefix: prefix)
        self.textWithHostBits = self.network == bytes ? nil : text
    }

    /// One warning for each network in `networks` written with host bits set, naming `option`.
    public static func hostBitWarnings(_ networks: [CIDR], option: String) -> [String] {
        networks.compactMap { network in
            network.textWithHostBits.map { "\(option) \($0) has host bits set: it matches \(network)" }
        }
    }

    /// Whether `address` lies inside this network. IPv4 and its IPv4-mapped IPv6 form (`::ffff:a.b.c.d`)
    /// are one address, both ways: a dual-stack listener applies IPv4 rules as written, and an IPv6
    /// network that covers `::ffff:0:0/96` (`::/0`, `::ffff:10.0.0.0/104`) covers those IPv4 addresses, as
    /// HAProxy matches them.
    public func contains(_ address: SocketAddress) -> Bool {
        guard var bytes = CIDR.bytes(of: address) else { return false }
        if bytes.count == 16, self.network.count == 4, bytes[0..<10].allSatisfy({ $0 == 0 }),
            bytes[10] == 0xff, bytes[11] == 0xff
        {
            bytes = Array(bytes[12..<16])
        } else if bytes.count == 4, self.network.count == 16 {
            bytes = [UInt8](repeating: 0, count: 10) + [0xff, 0xff] + bytes
        }
        guard bytes.count == self.network.count else { return false }
        return CIDR.masked(bytes, prefix: self.prefixLength) == self.network
    }

    public var description: String {
        let address = try? SocketAddress(packedIPAddress: ByteBuffer(bytes: self.network), port: 0)
        return "\(address?.ipAddress ?? "?")/\(self.prefixLength)"
    }

    static func addressBytes(_ text: String) -> [UInt8]? {
        guard let address = try? SocketAddress(ipAddress: text, port: 0) else { return nil }
        return CIDR.bytes(of: address)
    }

    static func bytes(of address: SocketAddress) -> [UInt8]? {
        switch address {
        case .v4(let v4):
            return withUnsafeBytes(of: v4.address.sin_addr) { Array($0) }
        case .v6(let v6):
            return withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
        case .unixDomainSocket:
            return nil
        }
    }

    static func masked(_ bytes: [UInt8], prefix: Int) -> [UInt8] {
        var result = bytes
        for index in result.indices {
            let bitsHere = max(0, min(8, prefix - index * 8))
            result[index] &= bitsHere == 0 ? 0 : UInt8(truncatingIfNeeded: 0xff << (8 - bitsHere))
        }
        return result
    }
}

/// A network in `--allow` or `--deny-destination` that could not be read.
public struct CIDRError: Error, Hashable, CustomStringConvertible {
    /// What the user wrote.
    public var text: String
    public var description: String {
        "invalid network '\(self.text)' (use an address or ADDRESS/PREFIX, e.g. 10.0.0.0/8 or ::1/128)"
    }
}
