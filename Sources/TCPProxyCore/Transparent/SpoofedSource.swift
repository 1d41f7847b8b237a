import Foundation
import NIOCore

/// Where a `--spoof-source` server connection is bound: the client's own address, so the server sees the
/// real client. The same on the NIO bridge (``TCPServerConnector``) and the direct engine (``DirectAcceptor``).
///
/// The port: in `tproxy` mode the kernel's pick (port 0). In `redirect` mode never the client's own: a
/// connection from the client's address and port to the same server *is* the client's connection to
/// conntrack, whose `REDIRECT` would send the proxy's SYN back to the proxy. The port is then picked here,
/// at random in the kernel's ephemeral range, and picked again when it is held (docs/TRANSPARENT.md).
struct SpoofedSource: Sendable, Hashable {
    /// The client's address, port 0.
    let client: SocketAddress
    /// The client's port, which a redirected client's server connection must not take; `nil` in tproxy mode.
    let avoidedPort: Int?

    /// `nil` when the client's address is unknown or of another family than the destination: the server
    /// connection then goes from the proxy's own address.
    init?(client: SocketAddress?, destination: SocketAddress, interception: TransparentConfiguration.Interception) {
        guard let client = client.flatMap(IPEndpoint.init), let server = IPEndpoint(destination),
            client.isIPv4 == server.isIPv4
        else { return nil }
        self.client = client.with(port: 0).socketAddress
        self.avoidedPort = interception == .redirect ? Int(client.port) : nil
    }

    /// How many addresses a connect may try: one when the kernel picks the port, else a few picks, since a
    /// picked port another spoofed connection from the same client holds fails at once (to bind, or to
    /// connect when one in TIME_WAIT has the same server).
    var attempts: Int { self.avoidedPort == nil ? 1 : 1 + SpoofedSourcePort.retries }

    /// The address to bind for one attempt: port 0, or a fresh pick. A picked port is bound with
    /// `SO_REUSEADDR`, as it may still be held in TIME_WAIT (the kernel's own picks may be too).
    func address() -> SocketAddress {
        guard let avoided = self.avoidedPort else { return self.client }
        var address = self.client
        address.port = SpoofedSourcePort.pick(avoiding: avoided)
        return address
    }

    /// Whether a failed attempt is worth another pick.
    static func isPortTaken(_ code: CInt) -> Bool {
        code == EADDRINUSE || code == EADDRNOTAVAIL
    }
}

/// A random port of the kernel's ephemeral range that is not a given one.
enum SpoofedSourcePort {
    /// How often a port already bound is replaced by another pick.
    static let retries = 8

    /// The kernel's ephemeral range (`net.ipv4.ip_local_port_range`, which covers IPv6 too), read once.
    static let range: ClosedRange<Int> = {
        let fallback = 32768...60999
        guard let text = try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8) else {
            return fallback
        }
        let bounds = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).compactMap { Int($0) }
        guard bounds.count == 2, 1 <= bounds[0], bounds[0] <= bounds[1], bounds[1] <= 65535 else { return fallback }
        return bounds[0]...bounds[1]
    }()

    /// A port of `range` other than `avoided` (the next one, should the range hold nothing else).
    static func pick(avoiding avoided: Int, in range: ClosedRange<Int> = Self.range) -> Int {
        let port = Int.random(in: range)
        guard port == avoided else { return port }
        return port < range.upperBound ? port + 1 : (port > range.lowerBound ? port - 1 : (port % 65535) + 1)
    }
}
