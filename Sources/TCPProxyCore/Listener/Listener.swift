import CoreMetrics
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOPosix
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One listening socket and the bridges it accepts: a `Service` that runs until graceful shutdown,
/// then stops accepting and lets open bridges finish within the drain timeout.
public final class Listener: Service, Sendable {
    let configuration: ProxyConfiguration
    let group: EventLoopGroup
    let logger: Logger
    let activeBridges = AdmissionCounter()
    private let boundAddress = NIOLockedValueBox<SocketAddress?>(nil)
    let observers: Bridge.Observers
    /// The drain deadline, for bridges that were handed to the splice engine.
    let spliceDrain = DrainSignal()
    /// With several targets or health checks: the targets and what is known of them.
    private let targetPool: TargetPool?
    private let healthChecker: HealthChecker?

    /// - Parameters:
    ///   - configuration: what to listen on, where to forward, and the limits.
    ///   - group: the event loops to run on.
    ///   - logger: the logger; each bridge adds its id and addresses to the events it logs.
    ///   - capture: the process's `--capture` file, if any.
    ///   - metrics: this listener's metrics, if `--metrics` is on.
    public init(
        configuration: ProxyConfiguration,
        group: EventLoopGroup,
        logger: Logger,
        capture: CaptureWriter? = nil,
        metrics: ProxyMetrics? = nil,
        metricsFactory: (any MetricsFactory)? = nil
    ) {
        self.configuration = configuration
        self.group = group
        self.observers = .init(capture: capture, metrics: metrics)
        var logger = logger
        logger[metadataKey: "listener"] = "\(configuration.name)"
        self.logger = logger
        if case .forward(let forward) = configuration.mode, forward.isPooled {
            let pool = TargetPool(
                specs: forward.targets,
                algorithm: forward.balance,
                healthChecked: forward.healthInterval != nil,
                logger: logger,
                listener: configuration.name,
                factory: metricsFactory
            )
            self.targetPool = pool
            self.healthChecker = forward.healthInterval.map { HealthChecker(pool: pool, interval: $0, group: group) }
        } else {
            self.targetPool = nil
            self.healthChecker = nil
        }
    }

    /// The address the socket is bound to, once it is (with the real port when port 0 was asked for).
    public var localAddress: SocketAddress? { self.boundAddress.withLockedValue { $0 } }

    /// This listener's metrics, if `--metrics` is on.
    public var metrics: ProxyMetrics? { self.observers.metrics }

    /// Open bridges right now.
    public var activeBridgeCount: Int { self.activeBridges.count }

    func setBoundAddress(_ address: SocketAddress?) {
        self.boundAddress.withLockedValue { $0 = address }
    }

    public func run() async throws {
        if let plan = self.directPlan() {
            try await self.runDirect(destination: plan.destination, engines: plan.engines)
            return
        }
        if self.configuration.bridge.splice != .never {
            // Started now rather than by the first bulk bridge: the first handover is not slowed by it, and
            // the process's descriptor count at rest does not change later (the engine holds two).
            _ = DirectEngine.shared
        }
        let quiescing = ServerQuiescingHelper(group: self.group)
        let channel = try await self.bind(quiescing: quiescing)
        let address = channel.localAddress
        self.boundAddress.withLockedValue { $0 = address }
        self.logger.logReady(
            "listening on \(address.map(\.logDescription) ?? self.configuration.listen.description)",
            metadata: ["mode": "\(self.configuration.mode)"]
        )
        self.configuration.admission.warnAboutHostBits(self.logger)
        if self.configuration.acceptProxyProtocol && self.configuration.admission.trustedProxies.isEmpty {
            self.logger.warning(
                "accepting PROXY headers from any peer: a client can claim any address; restrict senders with --trusted-proxy"
            )
        }

        self.healthChecker?.start()
        // Runs until the service group starts a graceful shutdown (or is cancelled).
        try? await gracefulShutdown()
        self.healthChecker?.stop()

        // Spliced bridges have no channel for the quiescing helper to tell; they end at the same deadline.
        await ListenerDrain.run(
            quiescing: quiescing,
            group: self.group,
            bridge: self.configuration.bridge,
            logger: self.logger,
            active: { self.activeBridgeCount },
            beforeQuiescing: { self.spliceDrain.beginDrain(timeout: self.configuration.bridge.drainTimeout) }
        )
        self.logger.info("listener stopped")
    }

    private func bind(quiescing: ServerQuiescingHelper) async throws -> Channel {
        let bridgeConfiguration = self.configuration.bridge
        let starter = self.makeStarter()
        // Transparent mode: IP_TRANSPARENT must be set before bind.
        var prepare: (@Sendable (Channel) throws -> Void)? = nil
        if let transparent = starter as? TransparentStarter {
            prepare = { channel in try transparent.prepareListeningSocket(channel) }
        }
        return try await ServerBootstrap.tcpproxyListener(
            group: self.group,
            logger: self.logger,
            quiescing: quiescing,
            prepare: prepare
        )
            // Accepted sockets inherit TCP_NODELAY from the listener (ServerBootstrap sets it);
            // initializeClient turns on half-closure (BridgeChannelOptions).
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try self.initializeClient(channel, starter: starter, configuration: bridgeConfiguration)
                }
            }
            .bindListener(to: self.configuration.listen)
    }

    /// Admits or turns away a new client, and for an admitted one builds its bridge.
    private func initializeClient(
        _ channel: Channel,
        starter: any BridgeStarter,
        configuration: BridgeConfiguration
    ) throws {
        let acceptsHeader = self.configuration.acceptProxyProtocol
        // With --accept-proxy-protocol, --allow applies to the address in the header, once it arrives.
        let decision = self.activeBridges.admit(
            self.configuration.admission,
            address: channel.remoteAddress,
            checkAllow: !acceptsHeader
        )
        self.observers.metrics?.accepted()
        guard decision == .admit else {
            let reason: CloseReason = decision == .notAllowed ? .notAllowed : .limitReached
            self.observers.metrics?.rejected(reason)
            self.logger.logConnectionRejected(client: channel.remoteAddress, reason: reason)
            try channel.pipeline.syncOperations.addHandler(CloseOnActiveHandler())
            return
        }
        do {
            try BridgeChannelOptions.apply(configuration, to: channel, reading: .upstream)
            let setup = BridgeSetup(
                id: BridgeID.next(),
                configuration: configuration,
                logger: self.logger,
                hooks: .init(finished: { [activeBridges] _ in activeBridges.release() }),
                observers: self.observers,
                spliceDrain: self.spliceDrain
            )
            if acceptsHeader {
                try channel.pipeline.syncOperations.addHandler(self.proxyHeaderReceiver(starter: starter, setup: setup))
            } else {
                try starter.start(client: channel, setup: setup)
                self.observers.metrics?.bridgeOpened()
            }
        } catch {
            self.activeBridges.release()
            throw error
        }
    }
}

extension Listener {
    /// `--accept-proxy-protocol`: reads the client's PROXY header, applies `--allow` to the address it
    /// carries, then starts the bridge with those addresses. A client that never becomes a bridge gives
    /// its `--max-connections` slot back.
    private func proxyHeaderReceiver(starter: any BridgeStarter, setup: BridgeSetup) -> ProxyHeaderReceiver {
        let admission = self.configuration.admission
        let metrics = self.observers.metrics
        let logger = self.logger
        let activeBridges = self.activeBridges
        return ProxyHeaderReceiver(
            timeout: .seconds(10),
            logger: logger,
            metrics: metrics,
            outcome: .init(
                received: { header, channel in
                    let client = header.source ?? channel.remoteAddress
                    guard admission.allows(client) else {
                        metrics?.rejected(.notAllowed)
                        logger.logConnectionRejected(client: client, reason: .notAllowed)
                        return false
                    }
                    var setup = setup
                    setup.announcedClient = header
                    do {
                        try starter.start(client: channel, setup: setup)
                    } catch {
                        return false
                    }
                    metrics?.bridgeOpened()
                    return true
                },
                abandoned: { activeBridges.release() }
            )
        )
    }

    /// What this listener's mode gives each admitted client.
    private func makeStarter() -> any BridgeStarter {
        switch self.configuration.mode {
        case .forward(let forward):
            if let pool = self.targetPool {
                ForwardStarter(connector: PooledServerConnector(pool: pool))
            } else {
                ForwardStarter(
                    connector: TCPServerConnector(target: ConnectTarget(forward.targets[0].endpoint), holdsHandshakeACK: true)
                )
            }
        case .transparent(let transparent):
            TransparentStarter(configuration: transparent)
        case .socks(let socks):
            SOCKSStarter(socks, listener: self.configuration, logger: self.logger)
        }
    }
}

/// A listener could not start.
public struct ListenerError: Error, CustomStringConvertible {
    /// The address it was asked to listen on.
    public var endpoint: Endpoint
    /// What the system said.
    public var underlying: Error
    /// What the address is for, when it is not a proxy listener (`--metrics`).
    public var purpose: String? = nil

    public var description: String {
        "cannot listen on \(self.endpoint)\(self.purpose.map { " (\($0))" } ?? ""): \(SystemErrorText.describe(self.underlying))"
    }

    /// Whether another socket holds the address (while a replaced listener lets go of it, on a reload).
    public var isAddressInUse: Bool {
        (self.underlying as? IOError)?.errnoCode == EADDRINUSE
    }
}
