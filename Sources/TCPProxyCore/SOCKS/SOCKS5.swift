import NIOCore

/// SOCKS5 (RFC 1928) and its username/password sub-negotiation (RFC 1929).
///
/// ```text
/// greeting:     VER=5 | NMETHODS | METHODS (NMETHODS bytes)                    RFC 1928 §3
/// selection:    VER=5 | METHOD
/// credentials:  VER=1 | ULEN | UNAME | PLEN | PASSWD                           RFC 1929 §2
/// status:       VER=1 | STATUS (0 success)
/// request:      VER=5 | CMD | RSV=0 | ATYP | DST.ADDR | DST.PORT (2)           RFC 1928 §4
/// reply:        VER=5 | REP | RSV=0 | ATYP | BND.ADDR | BND.PORT (2)           RFC 1928 §6
/// ```
enum SOCKS5 {
    /// `VER` of greetings, requests and replies.
    static let version: UInt8 = 5
    /// `VER` of the RFC 1929 sub-negotiation.
    static let authenticationVersion: UInt8 = 1

    /// RFC 1928 §5 `ATYP` values.
    static let addressTypeIPv4: UInt8 = 0x01
    static let addressTypeDomainName: UInt8 = 0x03
    static let addressTypeIPv6: UInt8 = 0x04
}

/// A SOCKS5 authentication method (RFC 1928 §3).
struct SOCKS5AuthenticationMethod: Hashable, Sendable {
    /// X'00' NO AUTHENTICATION REQUIRED.
    static let noneRequired = SOCKS5AuthenticationMethod(value: 0x00)
    /// X'02' USERNAME/PASSWORD (RFC 1929).
    static let usernamePassword = SOCKS5AuthenticationMethod(value: 0x02)
    /// X'FF' NO ACCEPTABLE METHODS.
    static let noneAcceptable = SOCKS5AuthenticationMethod(value: 0xFF)

    var value: UInt8
}

/// The client's first message: the methods it can authenticate with.
struct SOCKS5Greeting: Hashable, Sendable {
    var methods: [SOCKS5AuthenticationMethod]
}

/// RFC 1929 credentials, as bytes (the RFC does not say they are text).
struct SOCKS5Credentials: Hashable, Sendable, CustomStringConvertible {
    var username: [UInt8]
    var password: [UInt8]

    /// The user name only: a password never reaches a log.
    var description: String { "user \(String(decoding: self.username, as: UTF8.self))" }
}

/// A SOCKS5 request.
struct SOCKS5Request: Hashable, Sendable {
    /// `CMD`: only CONNECT is supported.
    var command: SOCKSCommand
    /// `DST.ADDR:DST.PORT`.
    var destination: SOCKSDestination
}

/// A SOCKS5 reply code (RFC 1928 §6 `REP`).
struct SOCKS5ReplyCode: Hashable, Sendable {
    static let succeeded = SOCKS5ReplyCode(value: 0x00)
    static let generalFailure = SOCKS5ReplyCode(value: 0x01)
    static let notAllowed = SOCKS5ReplyCode(value: 0x02)
    static let networkUnreachable = SOCKS5ReplyCode(value: 0x03)
    static let hostUnreachable = SOCKS5ReplyCode(value: 0x04)
    static let connectionRefused = SOCKS5ReplyCode(value: 0x05)
    static let ttlExpired = SOCKS5ReplyCode(value: 0x06)
    static let commandNotSupported = SOCKS5ReplyCode(value: 0x07)
    static let addressTypeNotSupported = SOCKS5ReplyCode(value: 0x08)

    var value: UInt8
}

/// The reply to a SOCKS5 request.
struct SOCKS5Reply: Hashable, Sendable {
    var code: SOCKS5ReplyCode
    /// The address the proxy's server socket is bound to; `0.0.0.0:0` when there is none (failures).
    var boundAddress: SocketAddress? = nil
}

extension ByteBuffer {
    /// Reads a SOCKS5 greeting (RFC 1928 §3).
    /// - Returns: the greeting, or `nil` until all of it has arrived (at most 257 bytes).
    /// - Throws: ``SOCKSError`` when it can never be valid; the reader index is unchanged.
    mutating func readSOCKS5Greeting() throws -> SOCKS5Greeting? {
        try self.parseSOCKSUnwindingIfNeeded { buffer in
            guard let version = buffer.readInteger(as: UInt8.self) else { return nil }
            guard version == SOCKS5.version else { throw SOCKSError.unsupportedVersion(version) }
            guard let count = buffer.readInteger(as: UInt8.self) else { return nil }
            guard count > 0 else { throw SOCKSError.socks5NoMethods }
            guard let methods = buffer.readBytes(length: Int(count)) else { return nil }
            return SOCKS5Greeting(methods: methods.map(SOCKS5AuthenticationMethod.init(value:)))
        }
    }

    /// Reads RFC 1929 credentials.
    /// - Returns: the credentials, or `nil` until all of them have arrived (at most 513 bytes).
    /// - Throws: ``SOCKSError/socks5AuthenticationVersion(_:)``; the reader index is unchanged.
    mutating func readSOCKS5Credentials() throws -> SOCKS5Credentials? {
        try self.parseSOCKSUnwindingIfNeeded { buffer in
            guard let version = buffer.readInteger(as: UInt8.self) else { return nil }
            guard version == SOCKS5.authenticationVersion else { throw SOCKSError.socks5AuthenticationVersion(version) }
            guard let usernameLength = buffer.readInteger(as: UInt8.self),
                let username = buffer.readBytes(length: Int(usernameLength)),
                let passwordLength = buffer.readInteger(as: UInt8.self),
                let password = buffer.readBytes(length: Int(passwordLength))
            else { return nil }
            return SOCKS5Credentials(username: username, password: password)
        }
    }

    /// Reads a SOCKS5 request (RFC 1928 §4).
    /// - Returns: the request, or `nil` until all of it has arrived (at most 262 bytes).
    /// - Throws: ``SOCKSError`` when it can never be valid; the reader index is unchanged.
    mutating func readSOCKS5Request() throws -> SOCKS5Request? {
        try self.parseSOCKSUnwindingIfNeeded { buffer in
            guard let version = buffer.readInteger(as: UInt8.self) else { return nil }
            guard version == SOCKS5.version else { throw SOCKSError.socks5RequestVersion(version) }
            guard let command = buffer.readInteger(as: UInt8.self),
                let reserved = buffer.readInteger(as: UInt8.self)
            else { return nil }
            guard reserved == 0 else { throw SOCKSError.socks5Reserved(reserved) }
            guard let type = buffer.readInteger(as: UInt8.self) else { return nil }
            let destination: SOCKSDestination
            switch type {
            case SOCKS5.addressTypeIPv4, SOCKS5.addressTypeIPv6:
                guard let bytes = buffer.readSlice(length: type == SOCKS5.addressTypeIPv4 ? 4 : 16),
                    let port = buffer.readSOCKSPort()
                else { return nil }
                destination = .address(try SocketAddress(packedIPAddress: bytes, port: port))
            case SOCKS5.addressTypeDomainName:
                guard let length = buffer.readInteger(as: UInt8.self) else { return nil }
                guard length > 0 else { throw SOCKSError.socks5InvalidHostName }
                guard let nameBytes = buffer.readBytes(length: Int(length)), let port = buffer.readSOCKSPort() else {
                    return nil
                }
                guard let name = SOCKSDestination.hostName(nameBytes) else { throw SOCKSError.socks5InvalidHostName }
                destination = .name(name, port: port)
            default:
                // RFC 1928 §6: X'08' Address type not supported.
                throw SOCKSError.socks5AddressTypeNotSupported(type)
            }
            return SOCKS5Request(command: SOCKSCommand(value: command), destination: destination)
        }
    }

    /// Writes the method selection (2 bytes).
    @discardableResult
    mutating func writeSOCKS5MethodSelection(_ method: SOCKS5AuthenticationMethod) -> Int {
        self.writeInteger(SOCKS5.version) + self.writeInteger(method.value)
    }

    /// Writes the RFC 1929 status (2 bytes): 0 for success, 1 for failure.
    @discardableResult
    mutating func writeSOCKS5AuthenticationStatus(succeeded: Bool) -> Int {
        self.writeInteger(SOCKS5.authenticationVersion) + self.writeInteger(UInt8(succeeded ? 0 : 1))
    }

    /// Writes a SOCKS5 reply (10 bytes for IPv4, 22 for IPv6).
    @discardableResult
    mutating func writeSOCKS5Reply(_ reply: SOCKS5Reply) -> Int {
        var written = self.writeInteger(SOCKS5.version) + self.writeInteger(reply.code.value) + self.writeInteger(UInt8(0))
        switch reply.boundAddress {
        case .some(let address) where address.protocol == .inet6:
            written += self.writeInteger(SOCKS5.addressTypeIPv6) + self.writeSOCKSAddressBytes(address)
            written += self.writeInteger(UInt16(truncatingIfNeeded: address.port ?? 0))
        case .some(let address) where address.protocol == .inet:
            written += self.writeInteger(SOCKS5.addressTypeIPv4) + self.writeSOCKSAddressBytes(address)
            written += self.writeInteger(UInt16(truncatingIfNeeded: address.port ?? 0))
        default:
            written += self.writeInteger(SOCKS5.addressTypeIPv4) + self.writeInteger(UInt32(0)) + self.writeInteger(UInt16(0))
        }
        return written
    }
}
