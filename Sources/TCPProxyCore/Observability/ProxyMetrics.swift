import CoreMetrics
import NIOCore
import Prometheus

/// One metric tcpproxy exports: its name, kind, the labels it adds to `listener` and `target`, and what it
/// counts.
public struct ProxyMetricDefinition: Sendable, Hashable {
    /// What kind of Prometheus metric it is.
    public enum Kind: String, Sendable, Hashable {
        case counter, gauge, histogram
    }

    /// The Prometheus name, snake_case with its unit and `_total` for counters.
    public var name: String
    public var kind: Kind
    /// The labels besides `listener` and `target`, with the values they take.
    public var labels: [String: [String]]
    /// One line for a reader of `/metrics` or the docs.
    public var help: String
}

/// The metrics of one listener: every metric tcpproxy exports is listed here, in ``ProxyMetrics/all``
/// (every listener), ``ProxyMetrics/socks`` (SOCKS listeners) and ``ProxyMetrics/tunnels`` (mux and
/// demux), as Envoy keeps its TCP proxy statistics in one list (`ALL_TCP_PROXY_STATS`).
///
/// Every metric carries the labels `listener` (the listener's name) and `target` (the configured target,
/// `socks` for SOCKS listeners). All metric objects are made in `init`, so the calls the engine makes from
/// event-loop threads only touch atomics or a short lock inside the metrics backend: no lookups, no strings.
public final class ProxyMetrics: Sendable {
    // MARK: The list

    public static let bridgesActive = ProxyMetricDefinition(
        name: "tcpproxy_bridges_active",
        kind: .gauge,
        labels: [:],
        help: "Bridges open right now."
    )
    public static let connectionsAccepted = ProxyMetricDefinition(
        name: "tcpproxy_connections_accepted_total",
        kind: .counter,
        labels: [:],
        help: "Client connections admitted."
    )
    public static let connectionsRejected = ProxyMetricDefinition(
        name: "tcpproxy_connections_rejected_total",
        kind: .counter,
        labels: ["reason": rejectReasons.map(\.rawValue)],
        help: "Client connections closed at accept, by reason."
    )
    public static let bytes = ProxyMetricDefinition(
        name: "tcpproxy_bytes_total",
        kind: .counter,
        labels: ["direction": ["upstream", "downstream"]],
        help: "Bytes read from the source of each direction (upstream: client to server)."
    )
    public static let connectFailures = ProxyMetricDefinition(
        name: "tcpproxy_connect_failures_total",
        kind: .counter,
        labels: [:],
        help: "Server connections that failed or timed out."
    )
    public static let timeouts = ProxyMetricDefinition(
        name: "tcpproxy_timeouts_total",
        kind: .counter,
        labels: ["kind": timeoutKinds.map(\.kind)],
        help: "Bridges ended by a timeout, by kind."
    )
    public static let bridgesClosed = ProxyMetricDefinition(
        name: "tcpproxy_bridges_closed_total",
        kind: .counter,
        labels: ["reason": closeReasons.map(\.rawValue)],
        help: "Bridges ended, by close reason."
    )
    public static let bridgeDuration = ProxyMetricDefinition(
        name: "tcpproxy_bridge_duration_seconds",
        kind: .histogram,
        labels: [:],
        help: "How long bridges lasted, from accept to close."
    )
    public static let captureDropped = ProxyMetricDefinition(
        name: "tcpproxy_capture_dropped_total",
        kind: .counter,
        labels: [:],
        help: "Packets --capture dropped because the writer fell behind."
    )

    // SOCKS listeners only (target `socks`): made there and nowhere else, so other listeners export none.

    public static let socksHandshakes = ProxyMetricDefinition(
        name: "tcpproxy_socks_handshakes_total",
        kind: .counter,
        labels: ["version": socksVersions.map(\.rawValue)],
        help: "SOCKS requests read in full, by protocol version (4, 4a, 5)."
    )
    public static let socksAuthenticationFailures = ProxyMetricDefinition(
        name: "tcpproxy_socks_auth_failures_total",
        kind: .counter,
        labels: [:],
        help: "SOCKS clients refused at authentication: wrong user or password, no acceptable method, SOCKS4 with --users."
    )
    public static let socksReplies = ProxyMetricDefinition(
        name: "tcpproxy_socks_replies_total",
        kind: .counter,
        labels: ["code": socksReplyCodes.map(SOCKSReply.label)],
        help: "SOCKS request replies sent, by code: SOCKS5 0x00 to 0x08, SOCKS4 0x5a (granted) and 0x5b (rejected)."
    )

    /// The metrics a SOCKS listener exports besides ``all``.
    public static let socks: [ProxyMetricDefinition] = [socksHandshakes, socksAuthenticationFailures, socksReplies]

    // mux and demux listeners only (`tunnelMetrics: true`): made there and nowhere else. Each stream also
    // counts as a bridge in ``all``.

    public static let tunnelsActive = ProxyMetricDefinition(
        name: "tcpproxy_tunnels_active",
        kind: .gauge,
        labels: [:],
        help: "Tunnel connections up right now (mux: connected to the demux; demux: accepted from muxes)."
    )
    public static let tunnelConnects = ProxyMetricDefinition(
        name: "tcpproxy_tunnel_connects_total",
        kind: .counter,
        labels: [:],
        help: "Tunnel connections that came up: at the mux the first connect and every reconnect, at the demux each tunnel accepted."
    )
    public static let tunnelConnectFailures = ProxyMetricDefinition(
        name: "tcpproxy_tunnel_connect_failures_total",
        kind: .counter,
        labels: [:],
        help: "Mux: tunnel connect attempts that failed (each is retried with backoff)."
    )
    public static let tunnelsClosed = ProxyMetricDefinition(
        name: "tcpproxy_tunnels_closed_total",
        kind: .counter,
        labels: ["reason": MuxTunnelCloseReason.allCases.map(\.rawValue)],
        help: "Tunnel connections that closed, by reason; every reason but shutdown is a drop."
    )
    public static let streamsActive = ProxyMetricDefinition(
        name: "tcpproxy_streams_active",
        kind: .gauge,
        labels: [:],
        help: "Streams open on tunnels right now (mux clients still waiting for a tunnel are not streams yet)."
    )
    public static let streamsOpened = ProxyMetricDefinition(
        name: "tcpproxy_streams_opened_total",
        kind: .counter,
        labels: [:],
        help: "Streams opened on a tunnel (mux: OPEN sent; demux: OPEN accepted)."
    )
    public static let streamResetsSent = ProxyMetricDefinition(
        name: "tcpproxy_stream_resets_sent_total",
        kind: .counter,
        labels: ["code": resetCodeLabels],
        help: "RESET frames sent, by code."
    )
    public static let streamResetsReceived = ProxyMetricDefinition(
        name: "tcpproxy_stream_resets_received_total",
        kind: .counter,
        labels: ["code": resetCodeLabels],
        help: "RESET frames received, by code (codes a RESET does not normally carry count as other)."
    )

    /// The metrics a mux or demux listener exports besides ``all``.
    public static let tunnels: [ProxyMetricDefinition] = [
        tunnelsActive, tunnelConnects, tunnelConnectFailures, tunnelsClosed, streamsActive, streamsOpened,
        streamResetsSent, streamResetsReceived,
    ]

    /// Every metric tcpproxy exports on every listener (SOCKS listeners add ``socks``).
    public static let all: [ProxyMetricDefinition] = [
        bridgesActive, connectionsAccepted, connectionsRejected, bytes, connectFailures, timeouts,
        bridgesClosed, bridgeDuration, captureDropped,
    ]

    /// Histogram buckets for ``bridgeDuration``: 1 ms to 1 h.
    public static let durationBuckets: [Duration] = [
        .milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(50), .milliseconds(100),
        .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10),
        .seconds(30), .seconds(60), .seconds(300), .seconds(900), .seconds(1800), .seconds(3600),
    ]

    /// A Prometheus factory for `registry` with ``durationBuckets`` set for ``bridgeDuration``.
    public static func prometheusFactory(registry: PrometheusCollectorRegistry) -> PrometheusMetricsFactory {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets[bridgeDuration.name] = durationBuckets
        return factory
    }

    // MARK: Label values, in index order

    static let rejectReasons: [CloseReason] = [
        .limitReached, .notAllowed, .loopRefused, .noOriginalDestination, .badProxyHeader, .drainTimeout,
    ]
    static let timeoutKinds: [(reason: CloseReason, kind: String)] = [
        (.connectTimeout, "connect"), (.stallTimeout, "stall"), (.idleTimeout, "idle"), (.drainTimeout, "drain"),
        (.handshakeTimeout, "handshake"),
    ]
    /// The RESET codes counted by name; any other code counts as `other` (the last label).
    static let resetCodes: [MuxErrorCode] = [
        .refusedStream, .connectFailed, .connectTimeout, .connectionReset, .stallTimeout, .idleTimeout, .drainTimeout,
        .targetNotAllowed,
    ]
    static let resetCodeLabels: [String] = resetCodes.map(\.description) + ["other"]
    static let closeReasons: [CloseReason] = [
        .completed, .clientReset, .serverReset, .connectFailed, .connectTimeout, .stallTimeout, .idleTimeout,
        .drainTimeout, .limitReached, .notAllowed, .loopRefused, .noOriginalDestination, .handshakeFailed, .handshakeTimeout,
        .badProxyHeader,
    ]

    // MARK: The metric objects

    private let active: CoreMetrics.Meter
    private let acceptedCounter: CoreMetrics.Counter
    private let rejectedCounters: [CoreMetrics.Counter]  // by rejectIndex
    private let upstreamBytes: CoreMetrics.Counter
    private let downstreamBytes: CoreMetrics.Counter
    private let connectFailureCounter: CoreMetrics.Counter
    private let timeoutCounters: [CoreMetrics.Counter]  // by timeoutIndex
    private let closedCounters: [CoreMetrics.Counter]  // by closeIndex
    private let duration: CoreMetrics.Timer
    private let captureDroppedCounter: CoreMetrics.Counter
    private let socksCounters: SOCKSCounters?  // SOCKS listeners only
    private let tunnelCounters: TunnelCounters?  // mux and demux listeners only

    /// - Parameters:
    ///   - listener: the listener's name.
    ///   - target: the configured target (`host:port`), or `socks` for a SOCKS listener.
    ///   - factory: where the metrics go: a `PrometheusMetricsFactory` in production (its duration buckets are
    ///     set to ``durationBuckets`` here if not set already), `TestMetrics` in tests.
    ///   - tunnelMetrics: a mux or demux listener: also make ``tunnels``.
    public init(listener: String, target: String, factory: any MetricsFactory, tunnelMetrics: Bool = false) {
        var factory = factory
        if var prometheus = factory as? PrometheusMetricsFactory,
            prometheus.durationHistogramBuckets[Self.bridgeDuration.name] == nil
        {
            prometheus.durationHistogramBuckets[Self.bridgeDuration.name] = Self.durationBuckets
            factory = prometheus
        }
        let base = [("listener", listener), ("target", target)]
        func counter(_ definition: ProxyMetricDefinition, _ extra: (String, String)? = nil) -> CoreMetrics.Counter {
            CoreMetrics.Counter(label: definition.name, dimensions: base + (extra.map { [$0] } ?? []), factory: factory)
        }

        self.active = CoreMetrics.Meter(label: Self.bridgesActive.name, dimensions: base, factory: factory)
        self.acceptedCounter = counter(Self.connectionsAccepted)
        self.rejectedCounters = Self.rejectReasons.map { counter(Self.connectionsRejected, ("reason", $0.rawValue)) }
        self.upstreamBytes = counter(Self.bytes, ("direction", "upstream"))
        self.downstreamBytes = counter(Self.bytes, ("direction", "downstream"))
        self.connectFailureCounter = counter(Self.connectFailures)
        self.timeoutCounters = Self.timeoutKinds.map { counter(Self.timeouts, ("kind", $0.kind)) }
        self.closedCounters = Self.closeReasons.map { counter(Self.bridgesClosed, ("reason", $0.rawValue)) }
        self.duration = CoreMetrics.Timer(label: Self.bridgeDuration.name, dimensions: base, factory: factory)
        self.captureDroppedCounter = counter(Self.captureDropped)
        self.socksCounters =
            target == "socks"
            ? SOCKSCounters(
                handshakes: Self.socksVersions.map { counter(Self.socksHandshakes, ("version", $0.rawValue)) },
                authenticationFailures: counter(Self.socksAuthenticationFailures),
                replies: Self.socksReplyCodes.map { counter(Self.socksReplies, ("code", SOCKSReply.label($0))) }
            ) : nil
        self.tunnelCounters =
            tunnelMetrics
            ? TunnelCounters(
                active: CoreMetrics.Meter(label: Self.tunnelsActive.name, dimensions: base, factory: factory),
                connects: counter(Self.tunnelConnects),
                connectFailures: counter(Self.tunnelConnectFailures),
                closed: MuxTunnelCloseReason.allCases.map { counter(Self.tunnelsClosed, ("reason", $0.rawValue)) },
                streamsActive: CoreMetrics.Meter(label: Self.streamsActive.name, dimensions: base, factory: factory),
                streamsOpened: counter(Self.streamsOpened),
                resetsSent: Self.resetCodeLabels.map { counter(Self.streamResetsSent, ("code", $0)) },
                resetsReceived: Self.resetCodeLabels.map { counter(Self.streamResetsReceived, ("code", $0)) }
            ) : nil
    }

    // MARK: Events

    /// A client connection was accepted.
    func accepted() {
        self.acceptedCounter.increment()
    }

    /// A client was closed at accept (`rejectReasons`; other reasons are ignored).
    func rejected(_ reason: CloseReason) {
        guard let index = Self.rejectIndex(reason) else { return }
        self.rejectedCounters[index].increment()
    }

    /// A bridge was set up.
    func bridgeOpened() {
        self.active.increment()
    }

    /// Bytes read since the last call, per direction; either may be 0.
    func addBytes(upstream: UInt64, downstream: UInt64) {
        if upstream > 0 { self.upstreamBytes.increment(by: Int64(truncatingIfNeeded: upstream)) }
        if downstream > 0 { self.downstreamBytes.increment(by: Int64(truncatingIfNeeded: downstream)) }
    }

    /// A bridge ended after `duration`, for `reason`.
    func bridgeClosed(_ reason: CloseReason, duration: TimeAmount) {
        self.active.decrement()
        self.closedCounters[Self.closeIndex(reason)].increment()
        self.duration.recordNanoseconds(max(0, duration.nanoseconds))
        if reason == .connectFailed || reason == .connectTimeout {
            self.connectFailureCounter.increment()
        }
        if let index = Self.timeoutIndex(reason) {
            self.timeoutCounters[index].increment()
        }
    }

    /// `--capture` dropped `count` packets.
    public func captureDropped(_ count: Int) {
        guard count > 0 else { return }
        self.captureDroppedCounter.increment(by: count)
    }

    /// A SOCKS client's request was read in full.
    func socksHandshake(_ version: SOCKSVersion) {
        self.socksCounters?.handshakes[Self.socksVersions.firstIndex(of: version)!].increment()
    }

    /// A SOCKS client was refused at authentication.
    func socksAuthenticationFailed() {
        self.socksCounters?.authenticationFailures.increment()
    }

    /// A SOCKS request reply with this code was sent.
    func socksReplied(_ code: UInt8) {
        guard let index = Self.socksReplyCodes.firstIndex(of: code) else { return }
        self.socksCounters?.replies[index].increment()
    }

    /// A tunnel connection came up (mux: connected; demux: accepted).
    func tunnelOpened() {
        guard let counters = self.tunnelCounters else { return }
        counters.active.increment()
        counters.connects.increment()
    }

    /// Mux: a tunnel connect attempt failed.
    func tunnelConnectFailed() {
        self.tunnelCounters?.connectFailures.increment()
    }

    /// A tunnel connection that came up has closed, for `reason`.
    func tunnelClosed(_ reason: MuxTunnelCloseReason) {
        guard let counters = self.tunnelCounters else { return }
        counters.active.decrement()
        counters.closed[MuxTunnelCloseReason.allCases.firstIndex(of: reason)!].increment()
    }

    /// A stream was opened on a tunnel.
    func streamOpened() {
        guard let counters = self.tunnelCounters else { return }
        counters.streamsActive.increment()
        counters.streamsOpened.increment()
    }

    /// A stream opened on a tunnel has ended.
    func streamClosed() {
        self.tunnelCounters?.streamsActive.decrement()
    }

    /// A RESET frame with `code` was sent (`sent`) or received.
    func streamReset(_ code: MuxErrorCode, sent: Bool) {
        guard let counters = self.tunnelCounters else { return }
        let index = Self.resetCodes.firstIndex(of: code) ?? Self.resetCodes.count
        (sent ? counters.resetsSent : counters.resetsReceived)[index].increment()
    }

    /// The mux and demux metrics; arrays are by the index of their label value.
    private struct TunnelCounters: Sendable {
        var active: CoreMetrics.Meter
        var connects: CoreMetrics.Counter
        var connectFailures: CoreMetrics.Counter
        var closed: [CoreMetrics.Counter]
        var streamsActive: CoreMetrics.Meter
        var streamsOpened: CoreMetrics.Counter
        var resetsSent: [CoreMetrics.Counter]
        var resetsReceived: [CoreMetrics.Counter]
    }

    /// The SOCKS counters, by the index of their label value.
    private struct SOCKSCounters: Sendable {
        var handshakes: [CoreMetrics.Counter]
        var authenticationFailures: CoreMetrics.Counter
        var replies: [CoreMetrics.Counter]
    }

    static let socksVersions = SOCKSVersion.allCases
    static let socksReplyCodes: [UInt8] = Array(0x00...0x08) + [0x5A, 0x5B]

    // MARK: Indexes (must match the label lists above)

    static func rejectIndex(_ reason: CloseReason) -> Int? {
        switch reason {
        case .limitReached: 0
        case .notAllowed: 1
        case .loopRefused: 2
        case .noOriginalDestination: 3
        case .badProxyHeader: 4
        case .drainTimeout: 5
        default: nil
        }
    }

    static func timeoutIndex(_ reason: CloseReason) -> Int? {
        switch reason {
        case .connectTimeout: 0
        case .stallTimeout: 1
        case .idleTimeout: 2
        case .drainTimeout: 3
        case .handshakeTimeout: 4
        default: nil
        }
    }

    static func closeIndex(_ reason: CloseReason) -> Int {
        switch reason {
        case .completed: 0
        case .clientReset: 1
        case .serverReset: 2
        case .connectFailed: 3
        case .connectTimeout: 4
        case .stallTimeout: 5
        case .idleTimeout: 6
        case .drainTimeout: 7
        case .limitReached: 8
        case .notAllowed: 9
        case .loopRefused: 10
        case .noOriginalDestination: 11
        case .handshakeFailed: 12
        case .handshakeTimeout: 13
        case .badProxyHeader: 14
        }
    }
}
