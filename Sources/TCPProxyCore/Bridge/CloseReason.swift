/// Why a bridge ended, or why a client was turned away. The log line and the metric label share it.
public enum CloseReason: String, Sendable, Hashable, CustomStringConvertible {
    /// Both directions saw end of stream and every buffered byte was written.
    case completed
    /// The client reset the connection, or a write to it failed.
    case clientReset
    /// The server reset the connection, or a write to it failed.
    case serverReset
    /// The server connection could not be made.
    case connectFailed
    /// The server connection was not made within `--connect-timeout`.
    case connectTimeout
    /// A direction held data and delivered none of it for `--stall-timeout`.
    case stallTimeout
    /// No byte moved either way for `--idle-timeout`.
    case idleTimeout
    /// The proxy was shutting down and `--drain-timeout` ran out.
    case drainTimeout
    /// `--max-connections` bridges were already open.
    case limitReached
    /// The client's address is outside every `--allow` network (or a SOCKS login was refused).
    case notAllowed
    /// A SOCKS client sent a request that breaks the protocol, or one the proxy does not serve.
    case handshakeFailed
    /// A SOCKS client did not complete its handshake within `--handshake-timeout`.
    case handshakeTimeout
    /// Transparent mode: the client's original destination is the proxy's own listener (a loop).
    case loopRefused
    /// Transparent mode: the client's original destination could not be read (`redirect`: conntrack
    /// has no entry, so nothing redirected it).
    case noOriginalDestination
    /// `--accept-proxy-protocol`: the client sent no valid PROXY header in time.
    case badProxyHeader

    public var description: String { self.rawValue }

    /// Whether the proxy cuts the bridge short (a reset, not a FIN, towards peers still connected):
    /// their data could not be delivered, and a reset tells them so.
    var isAbortive: Bool {
        switch self {
        case .clientReset, .serverReset, .stallTimeout: true
        default: false
        }
    }

    /// Timeouts that end a bridge its peers did not end (idle, drain): a peer with bytes to or from it
    /// pending at that moment gets a reset, one with nothing pending a FIN
    /// (``LinuxSocketOptions/closingCutsStream(peer:partner:heldFor:heldFrom:)``).
    var resetsCutStreams: Bool { self == .idleTimeout || self == .drainTimeout }

    /// Whether the server connection never came: what the client sent went nowhere, so its socket's unread
    /// bytes are read and dropped before it closes (``LinuxSocketOptions/discardInput(descriptor:limit:)``),
    /// and the client sees a FIN rather than the reset close(2) sends over unread bytes.
    var dropsClientInput: Bool { self == .connectFailed || self == .connectTimeout }
}
