import Logging
import NIOCore

/// Which clients a listener accepts at all: `--allow` networks and `--max-connections`.
public struct AdmissionPolicy: Sendable, Hashable {
    /// Clients must come from one of these networks; empty means everyone.
    public var allow: [CIDR] = []
    /// At most this many bridges at once; `nil` means no limit.
    public var maxConnections: Int? = nil
    /// With `--accept-proxy-protocol`: the only peers allowed to connect and send PROXY headers
    /// (`--trusted-proxy`); empty means any peer. `--allow` then applies to the address in the header,
    /// so without this list anyone who can reach the port could claim an allowed address.
    public var trustedProxies: [CIDR] = []

    public init(allow: [CIDR] = [], maxConnections: Int? = nil, trustedProxies: [CIDR] = []) {
        self.allow = allow
        self.maxConnections = maxConnections
        self.trustedProxies = trustedProxies
    }

    /// Logs a warning for each network written with host bits set (`--allow 1.2.3.4/8`), as the listener starts.
    func warnAboutHostBits(_ logger: Logger) {
        for warning in CIDR.hostBitWarnings(self.allow, option: "--allow")
            + CIDR.hostBitWarnings(self.trustedProxies, option: "--trusted-proxy")
        {
            logger.warning("\(warning)")
        }
    }

    /// Whether `peer` may send a PROXY header.
    public func trustsProxy(_ peer: SocketAddress?) -> Bool {
        guard !self.trustedProxies.isEmpty else { return true }
        guard let peer else { return false }
        return self.trustedProxies.contains { $0.contains(peer) }
    }

    /// What to do with a client that just arrived.
    public enum Decision: Hashable, Sendable {
        /// Bridge it.
        case admit
        /// Close it: its address is outside every `--allow` network.
        case notAllowed
        /// Close it: `--max-connections` bridges are already open.
        case limitReached
    }

    /// Whether `address` passes `--allow`.
    public func allows(_ address: SocketAddress?) -> Bool {
        guard !self.allow.isEmpty else { return true }
        guard let address else { return false }
        return self.allow.contains { $0.contains(address) }
    }

    /// Decides on a new client.
    /// - Parameters:
    ///   - address: the client's address, `nil` if the kernel could not tell.
    ///   - activeBridges: how many bridges are open now, not counting this client.
    /// - Returns: whether to admit it, and if not, why.
    ///   - checkAllow: whether to apply `--allow` now (not when the address comes later, in a PROXY header).
    public func decide(address: SocketAddress?, activeBridges: Int, checkAllow: Bool = true) -> Decision {
        if !checkAllow, !self.trustsProxy(address) {
            return .notAllowed
        }
        if checkAllow, !self.allow.isEmpty {
            guard let address, self.allow.contains(where: { $0.contains(address) }) else { return .notAllowed }
        }
        if let maxConnections, activeBridges >= maxConnections {
            return .limitReached
        }
        return .admit
    }
}
