/// Why a tunnel connection closed: the `reason` of `tunnel down` / `tunnel closed` in the log and of
/// `tcpproxy_tunnels_closed_total`. Every reason but ``shutdown`` is a drop.
public enum MuxTunnelCloseReason: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// An orderly end: this end or the peer drained (GOAWAY `noError`), or the stream ids ran out.
    case shutdown
    /// The socket closed or failed without a GOAWAY: the peer went away, or the network broke.
    case connectionLost
    /// A GOAWAY with an error code, sent or received (a frame broke the protocol or the flow control).
    case protocolError
    /// A PING went unanswered for `--ping-timeout` (here, or at the peer, which said so in its GOAWAY).
    case pingTimeout
    /// The peer made us queue more answers than it read (``MuxSession/maximumControlBacklog``).
    case peerNotReading

    public var description: String { self.rawValue }

    /// The reason a GOAWAY with `code` gives, sent or received.
    init(goAway code: MuxErrorCode) {
        switch code {
        case .noError: self = .shutdown
        case .pingTimeout: self = .pingTimeout
        default: self = .protocolError
        }
    }
}
