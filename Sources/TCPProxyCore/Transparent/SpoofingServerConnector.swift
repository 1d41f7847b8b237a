import NIOCore
import NIOPosix

/// `--spoof-source`: connects to the server from the client's own address, so the server sees the real
/// client rather than the proxy.
///
/// The socket gets `IP_TRANSPARENT` (`IPV6_TRANSPARENT`) and is bound to the client's address with port 0
/// (the kernel picks a free port, as HAProxy's `usesrc clientip` does) before it connects. The server's
/// replies are addressed to the client, so they must be routed back through the proxy's host and handed
/// to this socket there: `docs/TRANSPARENT.md` gives the rule (`-m socket --transparent`, a fwmark and a
/// `local` route) and the server-side route.
struct SpoofingServerConnector: ServerConnector {
    /// The original destination.
    let target: IPEndpoint
    /// The client's address.
    let source: IPEndpoint

    func connect(
        on eventLoop: EventLoop,
        configuration: BridgeConfiguration,
        initialize: @escaping @Sendable (Channel) throws -> Void
    ) -> EventLoopFuture<Channel> {
        let target = self.target.socketAddress
        // ClientBootstrap applies channel options, then binds, then connects; it sets TCP_NODELAY by default.
        return ClientBootstrap(group: eventLoop)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(LinuxSocketOptions.transparentOption(for: target), value: 1)
            .connectTimeout(configuration.connectTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try BridgeChannelOptions.apply(configuration, to: channel, reading: .downstream)
                    try initialize(channel)
                }
            }
            .bind(to: self.source.with(port: 0).socketAddress)
            .connect(to: target)
    }

    var targetDescription: String { self.target.description }
}
