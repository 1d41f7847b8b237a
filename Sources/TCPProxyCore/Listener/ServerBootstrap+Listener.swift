import Logging
import NIOCore
import NIOExtras
import NIOPosix

extension ServerBootstrap {
    /// A server bootstrap set up the way every tcpproxy listener is (forward, socks, transparent, mux and
    /// demux): a deep backlog, address reuse, a pause instead of a spin when descriptors run out
    /// (``AcceptPauseHandler``), and the quiescing helper that stops accepting on shutdown.
    /// - Parameters:
    ///   - group: the event loops.
    ///   - backlog: the `listen(2)` backlog.
    ///   - logger: where accept failures are logged.
    ///   - quiescing: the listener's quiescing helper.
    ///   - prepare: anything the listening socket needs before bind (transparent mode's `IP_TRANSPARENT`).
    static func tcpproxyListener(
        group: EventLoopGroup,
        backlog: Int32 = 4096,
        logger: Logger,
        quiescing: ServerQuiescingHelper,
        prepare: (@Sendable (Channel) throws -> Void)? = nil
    ) -> ServerBootstrap {
        ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: backlog)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try prepare?(channel)
                    try channel.pipeline.syncOperations.addHandler(AcceptPauseHandler(logger: logger))
                    try channel.pipeline.syncOperations.addHandler(quiescing.makeServerChannelHandler(channel: channel))
                }
            }
    }
}

extension ServerBootstrap {
    /// Binds the listener to `endpoint`; a failure is a ``ListenerError`` that names it (and `purpose`).
    func bindListener(to endpoint: Endpoint, purpose: String? = nil) async throws -> Channel {
        do {
            return try await self.bind(host: endpoint.host, port: endpoint.port).get()
        } catch {
            throw ListenerError(endpoint: endpoint, underlying: error, purpose: purpose)
        }
    }
}
