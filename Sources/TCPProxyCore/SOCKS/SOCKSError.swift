/// Why a SOCKS handshake cannot go on. Each error knows the reply it earns (``reply``); the handler writes
/// it, then closes the connection.
enum SOCKSError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The first byte is neither 4 nor 5: not a SOCKS client we can answer, so close without a reply.
    case unsupportedVersion(UInt8)

    // SOCKS4 and SOCKS4a (reply 0x5B)

    /// A SOCKS4 `CD` other than CONNECT (BIND, or an unknown one).
    case socks4CommandNotSupported(UInt8)
    /// A SOCKS4 `USERID` with no NUL within ``SOCKS4/maximumUserIDLength`` bytes.
    case socks4UserIDTooLong
    /// A SOCKS4a host name with no NUL within ``SOCKSDestination/maximumHostNameLength`` bytes.
    case socks4HostNameTooLong
    /// A SOCKS4a host name that is empty or holds bytes a host name cannot.
    case socks4InvalidHostName
    /// `--users` is set, and SOCKS4 has no way to send a password.
    case socks4AuthenticationRequired

    // SOCKS5 method negotiation (reply 0x05 0xFF)

    /// A greeting that offers no method at all (`NMETHODS` 0).
    case socks5NoMethods
    /// None of the offered methods is the one this listener needs.
    case socks5NoAcceptableMethod

    // RFC 1929 username/password (reply 0x01 0x01)

    /// The sub-negotiation does not start with version 1.
    case socks5AuthenticationVersion(UInt8)
    /// Unknown user or wrong password.
    case socks5AuthenticationFailed

    // SOCKS5 requests (RFC 1928 §6 reply codes)

    /// A request whose `VER` is not 5 (reply 0x01).
    case socks5RequestVersion(UInt8)
    /// A request whose reserved byte is not 0 (reply 0x01).
    case socks5Reserved(UInt8)
    /// BIND, UDP ASSOCIATE or an unknown command (reply 0x07).
    case socks5CommandNotSupported(UInt8)
    /// An `ATYP` other than 1, 3 or 4 (reply 0x08).
    case socks5AddressTypeNotSupported(UInt8)
    /// A `DOMAINNAME` that is empty or holds bytes a host name cannot (reply 0x01).
    case socks5InvalidHostName

    /// What to write before closing: `nil` when the client's protocol is unknown.
    var reply: SOCKSReply? {
        switch self {
        case .unsupportedVersion:
            nil
        case .socks4CommandNotSupported, .socks4UserIDTooLong, .socks4HostNameTooLong, .socks4InvalidHostName,
            .socks4AuthenticationRequired:
            .socks4(.init(code: .rejected))
        case .socks5NoMethods, .socks5NoAcceptableMethod:
            // RFC 1928 §3: X'FF' NO ACCEPTABLE METHODS, then the client closes (and so do we).
            .socks5MethodSelection(.noneAcceptable)
        case .socks5AuthenticationVersion, .socks5AuthenticationFailed:
            // RFC 1929 §2: a STATUS other than X'00' is a failure, and the server closes.
            .socks5AuthenticationStatus(succeeded: false)
        case .socks5RequestVersion, .socks5Reserved, .socks5InvalidHostName:
            .socks5(.init(code: .generalFailure))
        case .socks5CommandNotSupported:
            .socks5(.init(code: .commandNotSupported))
        case .socks5AddressTypeNotSupported:
            .socks5(.init(code: .addressTypeNotSupported))
        }
    }

    /// Whether the client was turned away for its credentials (counted as an authentication failure).
    var isAuthenticationFailure: Bool {
        switch self {
        // A username/password subnegotiation of another version is answered `01 01`, as a wrong password is.
        case .socks4AuthenticationRequired, .socks5NoAcceptableMethod, .socks5AuthenticationFailed, .socks5AuthenticationVersion: true
        default: false
        }
    }

    var description: String {
        switch self {
        case .unsupportedVersion(let version): "unsupported socks version \(version)"
        case .socks4CommandNotSupported(let command): "socks4 command \(command) not supported"
        case .socks4UserIDTooLong: "socks4 user id longer than \(SOCKS4.maximumUserIDLength) bytes"
        case .socks4HostNameTooLong: "socks4a host name longer than \(SOCKSDestination.maximumHostNameLength) bytes"
        case .socks4InvalidHostName: "invalid socks4a host name"
        case .socks4AuthenticationRequired: "socks4 cannot authenticate and --users is set"
        case .socks5NoMethods: "socks5 greeting offers no method"
        case .socks5NoAcceptableMethod: "socks5 greeting offers no acceptable method"
        case .socks5AuthenticationVersion(let version): "unsupported socks5 authentication version \(version)"
        case .socks5AuthenticationFailed: "socks5 authentication failed"
        case .socks5RequestVersion(let version): "socks5 request with version \(version)"
        case .socks5Reserved(let value): "socks5 request with reserved byte \(value)"
        case .socks5CommandNotSupported(let command): "socks5 command \(command) not supported"
        case .socks5AddressTypeNotSupported(let type): "socks5 address type \(type) not supported"
        case .socks5InvalidHostName: "invalid socks5 host name"
        }
    }
}
