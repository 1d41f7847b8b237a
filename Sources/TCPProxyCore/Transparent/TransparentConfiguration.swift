/// `transparent` mode (SPEC §3): how connections reach the proxy, and how the proxy reaches their servers.
public struct TransparentConfiguration: Sendable, Hashable, CustomStringConvertible {
    /// How the Linux firewall sends clients to the listener, and so where their original destination is read.
    public enum Interception: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
        /// iptables `TPROXY` (or nftables `tproxy`): packets keep their destination and reach an
        /// `IP_TRANSPARENT` listener; the original destination is the accepted socket's local address.
        /// Needs CAP_NET_ADMIN or CAP_NET_RAW, and a policy route (`docs/TRANSPARENT.md`).
        case tproxy
        /// iptables `REDIRECT`/`DNAT` (or nftables `redirect`/`dnat`): the destination is rewritten to the
        /// listener; the original one is read back from conntrack (`SO_ORIGINAL_DST`, `IP6T_SO_ORIGINAL_DST`).
        /// Needs no privilege and no special routing.
        case redirect

        public var description: String { self.rawValue }
    }

    /// How clients are intercepted (`--mode`, default `redirect`).
    public var interception: Interception
    /// Connect to the server from the client's own address (`--spoof-source`), so the server sees the real
    /// client. Needs CAP_NET_ADMIN or CAP_NET_RAW, and routing that brings the server's replies back to the proxy.
    public var spoofSource: Bool

    /// - Parameters:
    ///   - interception: how clients are intercepted.
    ///   - spoofSource: whether server connections use the client's address.
    public init(interception: Interception = .redirect, spoofSource: Bool = false) {
        self.interception = interception
        self.spoofSource = spoofSource
    }

    public var description: String {
        "transparent (\(self.interception)\(self.spoofSource ? ", spoofing the client's address" : ""))"
    }
}
