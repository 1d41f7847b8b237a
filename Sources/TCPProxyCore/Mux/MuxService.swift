import Atomics
import Logging
import NIOCore
import NIOExtras
import NIOPosix
import ServiceLifecycle

/// `tcpproxy mux`: accepts clients and carries each one as a stream over one (or `--tunnels N`) tunnel
/// connections to a demux. A `Service` that runs until graceful shutdown, then stops accepting, lets open
/// streams finish within the drain timeout, and closes its tunnels with GOAWAY.
///
/// Each tunnel lives on an event loop of the service's own group, and clients are accepted on the same
/// loops, so a client and the tunnel carrying it share a thread and need no locks.
public final class MuxService: Service, Sendable {
    private let configuration: MuxConfiguration
    private let group: MultiThreadedEventLoopGroup
    private let logger: Logger
    private let environment: MuxStreamEnvironment
    private let connections: [MuxTunnelConnection]

    /// - Parameters:
    ///   - configuration: the listener, the tunnel endpoint and the limits.
    ///   - threads: the most event-loop threads to use (one per tunnel at most).
    ///   - logger: the logger.
    ///   - metrics: the listener's metrics; each stream counts as a bridge.
    public init(configuration: MuxConfiguration, threads: Int, logger: Logger, metrics: ProxyMetrics? = nil) {
        precondition(configuration.tunnel != nil, "mux needs a tunnel endpoint")
        self.configuration = configuration
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, min(threads, configuration.tunnels)))
        var logger = logger
        logger[metadataKey: "listener"] = "\(configuration.name.isEmpty ? "mux" : configuration.name)"
        self.logger = logger
        let environment = MuxStreamEnvironment(configuration: configuration, logger: logger, metrics: metrics)
        self.environment = environment
        let loops = Array(self.group.makeIterator())
        self.connections = (0..<max(1, configuration.tunnels)).map { index in
            MuxTunnelConnection(
                index: index,
                eventLoop: loops[index % loops.count],
                tunnel: configuration.tunnel!,
                environment: environment
            )
        }
    }

    /// Open streams right now.
    public var activeStreamCount: Int { self.environment.streams.count }

    public func run() async throws {
        do {
            try await self.serveUntilDrained()
        } catch {
            try? await self.group.shutdownGracefully()
            throw error
        }
        // GOAWAY, then each tunnel closes; the loops shut down once their sockets are closed.
        let stopped = self.connections.map { $0.stop() }
        for future in stopped { try? await future.get() }
        try? await self.group.shutdownGracefully()
        self.logger.info("listener stopped")
    }

    /// Listens until graceful shutdown, then stops accepting and waits for the streams to end.
    ///
    /// A function of its own so that the quiescing helper is gone before the event loops shut down: its
    /// `deinit` completes a promise on them, which NIO reports as an error on a loop that has shut down.
    private func serveUntilDrained() async throws {
        let quiescing = ServerQuiescingHelper(group: self.group)
        let channel = try await self.bind(quiescing: quiescing)
        self.logger.logReady(
            "listening on \(channel.localAddress.map(\.logDescription) ?? self.configuration.listen.description)",
            metadata: ["mode": "mux", "tunnel.address": "\(self.configuration.tunnel!)", "tunnels": "\(self.connections.count)"]
        )
        for connection in self.connections { connection.start() }
        self.configuration.admission.warnAboutHostBits(self.logger)

        try? await gracefulShutdown()

        await ListenerDrain.run(
            quiescing: quiescing,
            group: self.group,
            bridge: self.configuration.bridge,
            logger: self.logger,
            active: { self.activeStreamCount },
            beforeQuiescing: { for connection in self.connections { connection.quiesceStreams() } }
        )
    }

    private func bind(quiescing: ServerQuiescingHelper) async throws -> Channel {
        try await ServerBootstrap.tcpproxyListener(
            group: self.group,
            backlog: 4096,
            logger: self.logger,
            quiescing: quiescing
        )
            // initializeClient turns on half-closure (BridgeChannelOptions).
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try self.initializeClient(channel)
                }
            }
            .bindListener(to: self.configuration.listen)
    }

    /// Admits or turns away a client; an admitted one becomes a stream on a tunnel of its event loop.
    private func initializeClient(_ channel: Channel) throws {
        self.environment.metrics?.accepted()
        // Claims the client's slot in the same step, so loops accepting at once cannot exceed the limit.
        let decision = self.environment.streams.admit(self.configuration.admission, address: channel.remoteAddress)
        guard decision == .admit else {
            let reason: CloseReason = decision == .notAllowed ? .notAllowed : .limitReached
            self.environment.metrics?.rejected(reason)
            self.logger.logConnectionRejected(client: channel.remoteAddress, reason: reason)
            try channel.pipeline.syncOperations.addHandler(CloseOnActiveHandler())
            return
        }
        let stream: MuxStream
        do {
            try BridgeChannelOptions.apply(self.configuration.bridge, to: channel, reading: .upstream)
            try MuxStreamChannelOptions.apply(self.configuration.bridge, to: channel)
            stream = MuxStream(role: .mux, environment: self.environment, eventLoop: channel.eventLoop)
        } catch {
            self.environment.streams.release()
            throw error
        }
        try channel.pipeline.syncOperations.addHandler(stream.handler)
        stream.accepted(channel)
        self.connection(on: channel.eventLoop).attach(stream)
    }

    /// The least loaded tunnel connection on `eventLoop`.
    private func connection(on eventLoop: EventLoop) -> MuxTunnelConnection {
        let local = self.connections.filter { $0.eventLoop === eventLoop }
        guard let first = local.first else {
            // Not expected: clients are accepted only on the tunnels' loops.
            preconditionFailure("no tunnel on the client's event loop")
        }
        return local.min { $0.load < $1.load } ?? first
    }
}
