import Logging
import NIOCore

/// What an admitted client gets: in `forward` mode a bridge to the target at once; other modes put a
/// handshake first (SOCKS) or find the target from the socket (transparent).
protocol BridgeStarter: Sendable {
    /// Installs what the client channel needs. Runs in the channel initializer, before it is active.
    func start(client: Channel, setup: BridgeSetup) throws
}

/// What a listener gives every bridge it starts.
struct BridgeSetup {
    /// The bridge number, for logs.
    var id: UInt64
    /// Limits and timeouts.
    var configuration: BridgeConfiguration
    /// The listener's logger.
    var logger: Logger
    /// The listener's bookkeeping.
    var hooks: Bridge.Hooks
    /// The capture file and metrics.
    var observers: Bridge.Observers
    /// The client as its PROXY header described it (`--accept-proxy-protocol`).
    var announcedClient: ProxyHeader? = nil
    /// The address the client connected to, when it is not the client socket's local address (a
    /// transparent client's original destination): what `--proxy-protocol` tells the server.
    var clientDestination: SocketAddress? = nil
    /// The listener's drain, as spliced bridges see it.
    var spliceDrain: DrainSignal? = nil

    /// A bridge for `client` that connects through `connector`.
    func makeBridge(client: Channel, connector: any ServerConnector) -> Bridge {
        let bridge = Bridge(
            id: self.id,
            clientChannel: client,
            connector: connector,
            configuration: self.configuration,
            logger: self.logger,
            hooks: self.hooks,
            observers: self.observers,
            spliceDrain: self.spliceDrain
        )
        bridge.announcedClient = self.announcedClient
        bridge.clientDestination = self.clientDestination
        return bridge
    }
}

/// `forward` mode: every client is bridged to one target.
struct ForwardStarter: BridgeStarter {
    let connector: any ServerConnector

    func start(client: Channel, setup: BridgeSetup) throws {
        let bridge = setup.makeBridge(client: client, connector: self.connector)
        try client.pipeline.syncOperations.addHandler(bridge.clientChannelHandler)
    }
}
