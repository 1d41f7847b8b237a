extension Endpoint {
    /// Whether listeners on this address and on `other` could not both bind: the same port (not 0), and
    /// addresses that overlap once names are resolved: the same address, or a wildcard that takes the
    /// other's (`0.0.0.0` every IPv4 address; `[::]`, dual-stack as Linux binds it by default, every
    /// address). So `:8080` clashes with `127.0.0.1:8080`, and `localhost:8080` with `127.0.0.1:8080`.
    ///
    /// Names are resolved (getaddrinfo, which blocks: for checks at start and reload), and only when the
    /// ports match.
    public func clashes(with other: Endpoint) -> Bool {
        self.clashes(with: other, resolve: Self.addresses(of:))
    }

    /// ``clashes(with:)`` with the name resolution given (for tests).
    func clashes(with other: Endpoint, resolve: (String) -> [[UInt8]]) -> Bool {
        guard self.port == other.port, self.port != 0 else { return false }
        if self.host == other.host { return true }
        let theirs = resolve(other.host)
        return resolve(self.host).contains { mine in theirs.contains { Self.overlap(mine, $0) } }
    }

    /// Whether sockets bound to these two addresses (4 or 16 bytes) on one port would collide.
    static func overlap(_ first: [UInt8], _ second: [UInt8]) -> Bool {
        func isWildcard(_ address: [UInt8]) -> Bool { address.allSatisfy { $0 == 0 } }
        if first == second { return true }
        if isWildcard(first) && (first.count == 16 || second.count == 4) { return true }
        return isWildcard(second) && (second.count == 16 || first.count == 4)
    }
}
