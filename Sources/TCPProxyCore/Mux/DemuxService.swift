import Atomics
import Logging
import NIOCore
import NIOExtras
import NIOPosix
import ServiceLifecycle

/// `tcpproxy demux`: accepts tunnel connections from muxes; each stream opened on one becomes a connection
/// to the target. A `Service` that runs until graceful shutdown, then stops accepting tunnels, sends GOAWAY
/// on each, and lets open streams finish within the drain timeout.
public final class DemuxService: Service, Sendable {
    private let configuration: MuxConfiguration
    private let group: EventLoopGroup
    private let logger: Logger
    private let environment: MuxStreamEnvironment
    private let activeTunnels = ManagedAtomic<Int>(0)

    /// - Parameters:
    ///   - configuration: the listener, the target and the limits.
    ///   - group: the event loops; each tunnel and its streams' server connections share one.
    ///   - logger: the logger.
    ///   - metrics: the listener's metrics; each stream counts as a bridge.
    public init(configuration: MuxConfiguration, group: EventLoopGroup, logger: Logger, metrics: ProxyMetrics? = nil) {
        precondition(configuration.target != nil, "demux needs a target")
        self.configuration = configuration
        self.group = group
        var logger = logger
        logger[metadataKey: "listener"] = "\(configuration.name.isEmpty ? "demux" : configuration.name)"
        self.logger = logger
        self.environment = MuxStreamEnvironment(
            configuration: configuration,
            logger: logger,
            metrics: metrics,
            target: ConnectTarget(configuration.target!)
        )
    }

    /// Open streams right now.
    public var activeStreamCount: Int { self.environment.streams.count }

    public func run() async throws {
        let quiescing = ServerQuiescingHelper(group: self.group)
        let channel = try await self.bind(quiescing: quiescing)
        self.logger.logReady(
            "listening on \(channel.localAddress.map(\.logDescription) ?? self.configuration.listen.description)",
            metadata: ["mode": "demux", "target": "\(self.configuration.target!)"]
        )
        self.configuration.admission.warnAboutHostBits(self.logger)
        try? await gracefulShutdown()
        // Each tunnel gets GOAWAY and closes once its streams have ended (or hit the drain timeout); a
        // tunnel's close resets what is left of its streams.
        await ListenerDrain.run(
            quiescing: quiescing,
            group: self.group,
            bridge: self.configuration.bridge,
            logger: self.logger,
            active: { self.activeStreamCount }
        )
        self.logger.info("listener stopped")
    }

    private func bind(quiescing: ServerQuiescingHelper) async throws -> Channel {
        try await ServerBootstrap.tcpproxyListener(
            group: self.group,
            backlog: 256,
            logger: self.logger,
            quiescing: quiescing
        )
            .childChannelOption(.writeBufferWaterMark, value: MuxTunnelConnection.writeBufferWaterMark)
            .childChannelOption(.recvAllocator, value: MuxTunnelConnection.receiveAllocator)
            .childChannelOption(.maxMessagesPerRead, value: MuxTunnelConnection.readsPerWakeup)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try self.initializeTunnel(channel)
                }
            }
            .bindListener(to: self.configuration.listen)
    }

    private func initializeTunnel(_ channel: Channel) throws {
        let peer = channel.remoteAddress.logDescription
        guard self.configuration.admission.allows(channel.remoteAddress) else {
            self.logger.info("tunnel rejected", metadata: ["tunnel.peer": "\(peer)", "close.reason": "notAllowed"])
            channel.close(promise: nil)
            return
        }
        let session = MuxSession(role: .demux, channel: channel, environment: self.environment)
        let activeTunnels = self.activeTunnels
        let logger = self.logger
        activeTunnels.wrappingIncrement(ordering: .relaxed)
        logger.info("tunnel accepted", metadata: ["tunnel.peer": "\(peer)"])
        session.closed = { reason in
            activeTunnels.wrappingDecrement(ordering: .relaxed)
            logger.info("tunnel closed", metadata: ["tunnel.peer": "\(peer)", "reason": "\(reason)"])
        }
        try channel.pipeline.syncOperations.addHandler(MuxTunnelHandler(session: session))
    }
}
