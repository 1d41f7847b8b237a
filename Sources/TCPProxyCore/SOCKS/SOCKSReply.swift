import NIOCore

/// Something the proxy writes to a SOCKS client during the handshake.
enum SOCKSReply: Hashable, Sendable {
    /// The answer to a SOCKS4 or SOCKS4a request.
    case socks4(SOCKS4Reply)
    /// The SOCKS5 method the proxy picked (or X'FF').
    case socks5MethodSelection(SOCKS5AuthenticationMethod)
    /// The RFC 1929 status.
    case socks5AuthenticationStatus(succeeded: Bool)
    /// The answer to a SOCKS5 request.
    case socks5(SOCKS5Reply)

    /// The request reply code (`REP`, `CD`); `nil` for method selection and authentication status.
    var code: UInt8? {
        switch self {
        case .socks4(let reply): reply.code.value
        case .socks5(let reply): reply.code.value
        case .socks5MethodSelection, .socks5AuthenticationStatus: nil
        }
    }

    /// A reply code as the metrics label it: `0x00` … `0x08`, `0x5a`, `0x5b`.
    static func label(_ code: UInt8) -> String {
        let hex = String(code, radix: 16)
        return "0x" + (hex.count == 1 ? "0" + hex : hex)
    }
}

extension ByteBuffer {
    /// Writes `reply` in its protocol's format.
    @discardableResult
    mutating func writeSOCKSReply(_ reply: SOCKSReply) -> Int {
        switch reply {
        case .socks4(let reply): self.writeSOCKS4Reply(reply)
        case .socks5MethodSelection(let method): self.writeSOCKS5MethodSelection(method)
        case .socks5AuthenticationStatus(let succeeded): self.writeSOCKS5AuthenticationStatus(succeeded: succeeded)
        case .socks5(let reply): self.writeSOCKS5Reply(reply)
        }
    }
}
