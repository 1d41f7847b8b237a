/// What serves a listener's bridges (`--engine`, docs/BRIDGE.md "The direct engine").
public enum EngineMode: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// The direct engine when the listener qualifies (see ``ProxyConfiguration/directEngineObstacle(capturing:)``),
    /// NIO otherwise.
    case auto
    /// The direct engine: its own epoll threads accept, connect and move bytes with read(2)/write(2) and
    /// splice(2), no NIO channel per connection. Refused for a listener that does not qualify.
    case direct
    /// SwiftNIO channels for every bridge (bulk may still move to the splice engine: `--splice`).
    case nio

    public var description: String { self.rawValue }
}

extension ProxyConfiguration {
    /// Why this listener cannot run on the direct engine, or `nil` when it can. The direct engine serves
    /// `forward` to one target given as an address, and `transparent`, with bridges that only count and
    /// forward.
    /// - Parameter capturing: whether `--capture` is on.
    public func directEngineObstacle(capturing: Bool) -> String? {
        #if os(Linux)
        switch self.mode {
        case .forward(let forward):
            guard forward.targets.count == 1, forward.healthInterval == nil else {
                return "several targets and health checks need the NIO engine"
            }
            guard case .address = ConnectTarget(forward.targets[0].endpoint) else {
                return "a target given by name is resolved for each connection, on the NIO engine"
            }
        case .transparent:
            break
        case .socks:
            return "only forward and transparent mode run on the direct engine"
        }
        if self.acceptProxyProtocol { return "--accept-proxy-protocol needs the NIO engine" }
        if self.bridge.shapesChunks {
            return "rates, --log-data, --latency and --corrupt need the NIO engine"
        }
        if capturing { return "--capture needs the NIO engine" }
        return nil
        #else
        return "the direct engine needs Linux"
        #endif
    }
}
