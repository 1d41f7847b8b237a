import NIOCore

/// Everything a listener needs to run, turned from the command line (or a file) into values.
///
/// The CLI builds one of these and hands it to ``Listener``; nothing in the engine reads argv.
public struct ProxyConfiguration: Sendable {
    /// Where to accept clients.
    public var listen: Endpoint
    /// How each client's server is found.
    public var mode: ProxyMode
    /// A short name for logs: the mode, e.g. `forward`.
    public var name: String
    /// Bridge limits and timeouts.
    public var bridge: BridgeConfiguration
    /// Who may connect, and how many at once.
    public var admission: AdmissionPolicy
    /// Clients must start with a PROXY protocol header (`--accept-proxy-protocol`); its addresses are used
    /// for logs, `--allow` and headers sent on.
    public var acceptProxyProtocol = false

    /// - Parameters:
    ///   - listen: where to accept clients.
    ///   - mode: how each client's server is found.
    ///   - name: a short name for logs.
    ///   - bridge: limits and timeouts for each bridge.
    ///   - admission: who may connect, and how many at once.
    public init(
        listen: Endpoint,
        mode: ProxyMode,
        name: String = "forward",
        bridge: BridgeConfiguration = .init(),
        admission: AdmissionPolicy = .init(),
        acceptProxyProtocol: Bool = false
    ) {
        self.listen = listen
        self.mode = mode
        self.name = name
        self.bridge = bridge
        self.admission = admission
        self.acceptProxyProtocol = acceptProxyProtocol
    }
}

/// How a listener finds each client's server (SPEC §3).
public enum ProxyMode: Sendable, Hashable, CustomStringConvertible {
    /// Every client goes to one of these targets.
    case forward(ForwardConfiguration)
    /// Every client goes to its original destination: the address it tried to reach before the firewall
    /// sent it here (TPROXY or REDIRECT).
    case transparent(TransparentConfiguration)
    /// Every client names its own destination in a SOCKS4, SOCKS4a or SOCKS5 handshake.
    case socks(SOCKSConfiguration)

    public var description: String {
        switch self {
        case .forward(let forward): "forward to \(forward.targets.map(\.description).joined(separator: " "))"
        case .transparent(let transparent): "\(transparent)"
        case .socks: "socks"
        }
    }

    /// The `target` labels of this listener's per-target series (`tcpproxy_target_*`): none unless pooled.
    public var targetSeries: [String] {
        guard case .forward(let forward) = self, forward.isPooled else { return [] }
        return forward.targets.map(\.endpoint.description)
    }

    /// The `target` label of this mode's metrics.
    public var targetLabel: String {
        switch self {
        case .forward(let forward): forward.targets.map(\.endpoint.description).joined(separator: ",")
        case .transparent: "original-destination"
        case .socks: "socks"
        }
    }
}

/// `forward` mode's targets and how clients are spread over them (SPEC §3).
public struct ForwardConfiguration: Sendable, Hashable {
    /// One or more targets.
    public var targets: [TargetSpec]
    /// `--balance`.
    public var balance: BalanceAlgorithm
    /// `--health-interval`: how often each target is checked with a TCP connect; `nil` for no active checks
    /// (a target that fails a connect is then retried after a few seconds).
    public var healthInterval: TimeAmount?

    public init(targets: [TargetSpec], balance: BalanceAlgorithm = .roundrobin, healthInterval: TimeAmount? = nil) {
        self.targets = targets
        self.balance = balance
        self.healthInterval = healthInterval
    }

    /// One target, no balancing.
    public init(target: Endpoint) {
        self.init(targets: [TargetSpec(endpoint: target)])
    }

    /// Whether the listener keeps a pool of targets, with per-target state and metrics: several targets, or
    /// one that is health-checked.
    public var isPooled: Bool { self.targets.count > 1 || self.healthInterval != nil }
}

/// The limits and timeouts of one bridge (SPEC §2).
public struct BridgeConfiguration: Sendable, Hashable {
    /// Most bytes buffered per direction before the proxy stops reading from that direction's source.
    public var highWaterMark: Int = 64 * 1024
    /// A direction that holds data and delivers none of it for this long aborts the bridge; `nil` disables.
    public var stallTimeout: TimeAmount? = .seconds(10)
    /// A bridge with no traffic either way for this long is closed; `nil` disables.
    public var idleTimeout: TimeAmount? = nil
    /// How long to wait for the server connection.
    public var connectTimeout: TimeAmount = .seconds(10)
    /// After a shutdown signal, how long a bridge may go on before it is closed; `nil` waits forever.
    public var drainTimeout: TimeAmount? = .seconds(10)
    /// Most bytes per second read from the client (`--upstream-rate`); `nil` for no limit.
    public var upstreamRate: Int? = nil
    /// Most bytes per second read from the server (`--downstream-rate`); `nil` for no limit.
    public var downstreamRate: Int? = nil
    /// Log a hex dump of every chunk (`--log-data`).
    public var logData = false
    /// Delay every chunk by this much (`--latency MS`); `nil` for none.
    public var latency: TimeAmount? = nil
    /// Up to this much more delay per chunk, uniformly drawn (`--latency MS:JITTER_MS`).
    public var latencyJitter: TimeAmount = .zero
    /// Flip one bit in a chunk with this probability (`--corrupt`); 0 for never.
    public var corruptProbability: Double = 0
    /// Which directions `--latency` and `--corrupt` apply to (`--fault-direction`).
    public var faultDirections: Set<Direction> = [.upstream, .downstream]
    /// Send a PROXY protocol header of this version to each server first (`--proxy-protocol`).
    public var sendProxyHeader: ProxyProtocolVersion? = nil
    /// When a bridge's bytes move through the kernel with splice(2) instead of through NIO (`--splice`).
    public var splice: SpliceMode = .auto
    /// What serves the bridges: the direct engine or NIO (`--engine`).
    public var engine: EngineMode = .auto
    /// Whether the direct engine batches reads and writes through io_uring (`--io-uring`).
    public var ioUring: IOUringMode = .auto

    public init() {}

    /// The byte rate limit of `direction`, if any.
    func rate(_ direction: Direction) -> Int? {
        direction == .upstream ? self.upstreamRate : self.downstreamRate
    }

    /// Whether chunks need more than a plain hand-over between the two sockets. When `false`, the data
    /// path does nothing but count and forward.
    var shapesChunks: Bool {
        self.upstreamRate != nil || self.downstreamRate != nil || self.logData || self.latency != nil
            || self.corruptProbability > 0
    }
}
