import NIOCore

/// Which clients a listener accepts at all: `--allow` networks and `--max-connections`.
public struct AdmissionPolicy: Sendable, Hashable {
    /// Clients must come from one of these networks; empty means everyone.
    public var allow: [CIDR] = []
    /// At most this many bridges at once; `nil` means no limit.
    public var maxConnections: Int? = nil

    public init(allow: [CIDR] = [], maxConnections: Int? = nil) {
        self.allow = allow
        self.maxConnections = maxConnections
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

    /// Decides on a new client.
    /// - Parameters:
    ///   - address: the client's address, `nil` if the kernel could not tell.
    ///   - activeBridges: how many bridges are open now, not counting this client.
    /// - Returns: whether to admit it, and if not, why.
    public func decide(address: SocketAddress?, activeBridges: Int) -> Decision {
        if !self.allow.isEmpty {
            guard let address, self.allow.contains(where: { $0.contains(address) }) else { return .notAllowed }
        }
        if let maxConnections, activeBridges >= maxConnections {
            return .limitReached
        }
        return .admit
    }
}
