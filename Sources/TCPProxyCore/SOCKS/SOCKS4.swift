import NIOCore

/// SOCKS4 and SOCKS4a (no RFC: "SOCKS: A protocol for TCP proxy across firewalls" and its 4A extension).
///
/// ```text
/// request: VN=4 | CD | DSTPORT (2) | DSTIP (4) | USERID ... | NUL            (SOCKS4)
///          VN=4 | CD | DSTPORT (2) | 0.0.0.x  | USERID ... | NUL | HOST ... | NUL   (SOCKS4a, x != 0)
/// reply:   VN=0 | CD (0x5A granted, 0x5B rejected) | DSTPORT (2) | DSTIP (4)
/// ```
enum SOCKS4 {
    /// `VN` of a request.
    static let version: UInt8 = 4
    /// The most bytes in a `USERID`; a longer one is rejected once that many bytes came with no NUL.
    static let maximumUserIDLength = 255
}

/// A SOCKS4 or SOCKS4a request.
struct SOCKS4Request: Hashable, Sendable {
    /// `CD`: only CONNECT is supported.
    var command: SOCKSCommand
    /// `DSTIP:DSTPORT`, or for SOCKS4a the host name and `DSTPORT`.
    var destination: SOCKSDestination
    /// `USERID`, as sent (the proxy does not use it).
    var userID: [UInt8]

    /// Whether this is SOCKS4a: the proxy resolves a host name.
    var isSOCKS4a: Bool {
        if case .name = self.destination { return true }
        return false
    }
}

/// A SOCKS4 reply code.
struct SOCKS4ReplyCode: Hashable, Sendable {
    /// 0x5A: request granted.
    static let granted = SOCKS4ReplyCode(value: 0x5A)
    /// 0x5B: request rejected or failed (the one failure code SOCKS4 clients understand).
    static let rejected = SOCKS4ReplyCode(value: 0x5B)

    var value: UInt8
}

/// The reply to a SOCKS4 request.
struct SOCKS4Reply: Hashable, Sendable {
    var code: SOCKS4ReplyCode
    /// The address the proxy's server socket is bound to; written only for IPv4 (the fields are 0 otherwise).
    var boundAddress: SocketAddress? = nil
}

extension ByteBuffer {
    /// Reads a SOCKS4 or SOCKS4a request.
    /// - Returns: the request, or `nil` until all of it has arrived.
    /// - Throws: ``SOCKSError`` when the bytes can never be a valid request; the reader index is unchanged.
    mutating func readSOCKS4Request() throws -> SOCKS4Request? {
        try self.parseSOCKSUnwindingIfNeeded { buffer in
            guard let version = buffer.readInteger(as: UInt8.self) else { return nil }
            guard version == SOCKS4.version else { throw SOCKSError.unsupportedVersion(version) }
            guard let command = buffer.readInteger(as: UInt8.self),
                let port = buffer.readSOCKSPort(),
                let ip = buffer.readSlice(length: 4)
            else { return nil }
            guard
                let userID = try buffer.readSOCKSNULTerminatedBytes(
                    maximumLength: SOCKS4.maximumUserIDLength,
                    tooLong: .socks4UserIDTooLong
                )
            else { return nil }

            // SOCKS4a: DSTIP 0.0.0.x with x != 0 says a host name follows the user id.
            let ipBytes = Array(ip.readableBytesView)
            let destination: SOCKSDestination
            if ipBytes[0] == 0, ipBytes[1] == 0, ipBytes[2] == 0, ipBytes[3] != 0 {
                guard
                    let nameBytes = try buffer.readSOCKSNULTerminatedBytes(
                        maximumLength: SOCKSDestination.maximumHostNameLength,
                        tooLong: .socks4HostNameTooLong
                    )
                else { return nil }
                guard let name = SOCKSDestination.hostName(nameBytes) else { throw SOCKSError.socks4InvalidHostName }
                destination = .name(name, port: port)
            } else {
                destination = .address(try SocketAddress(packedIPAddress: ip, port: port))
            }
            return SOCKS4Request(command: SOCKSCommand(value: command), destination: destination, userID: userID)
        }
    }

    /// Writes a SOCKS4 reply (8 bytes).
    @discardableResult
    mutating func writeSOCKS4Reply(_ reply: SOCKS4Reply) -> Int {
        var written = self.writeInteger(UInt8(0)) + self.writeInteger(reply.code.value)
        if case .v4 = reply.boundAddress, let address = reply.boundAddress {
            written += self.writeInteger(UInt16(truncatingIfNeeded: address.port ?? 0))
            written += self.writeSOCKSAddressBytes(address)
        } else {
            written += self.writeInteger(UInt16(0)) + self.writeInteger(UInt32(0))
        }
        return written
    }
}
