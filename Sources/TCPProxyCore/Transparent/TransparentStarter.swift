import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// `transparent` mode on the NIO bridge: each client is bridged to its original destination, the address it
/// meant to reach before the firewall sent it to this listener (SPEC §3, ``OriginalDestination``).
///
/// A client without an original destination (`redirect` mode, connection not tracked) and a client whose
/// original destination is this very listener (a loop) are refused: logged, counted, closed.
struct TransparentStarter: BridgeStarter {
    let configuration: TransparentConfiguration

    /// Prepares the listening socket before it is bound: `IP_TRANSPARENT` in `tproxy` mode, and a check
    /// that `--spoof-source` will be allowed, so that a missing privilege stops the listener with a clear
    /// message instead of failing every connection.
    func prepareListeningSocket(_ channel: Channel) throws {
        if self.configuration.interception == .tproxy {
            try LinuxSocketOptions.setTransparent(channel)
        } else if self.configuration.spoofSource {
            try LinuxSocketOptions.checkTransparentPermitted()
        }
    }

    func start(client: Channel, setup: BridgeSetup) throws {
        let destination: IPEndpoint
        do {
            destination = try self.originalDestination(of: client)
        } catch {
            setup.logger.logNoOriginalDestination(client: client.remoteAddress, error: error)
            setup.observers.metrics?.rejected(.noOriginalDestination)
            throw ClientRefusal(reason: .noOriginalDestination)
        }
        if let listener = client.parent?.localAddress.flatMap(IPEndpoint.init),
            LoopGuard(listener: listener).isLoop(destination, isLocalAddress: LoopGuard.isLocalAddress)
        {
            setup.logger.logLoopRefused(client: client.remoteAddress, destination: destination)
            setup.observers.metrics?.rejected(.loopRefused)
            throw ClientRefusal(reason: .loopRefused)
        }
        var setup = setup
        setup.clientDestination = OriginalDestination.inFamily(of: client.localAddress, destination.socketAddress)
        let bridge = setup.makeBridge(client: client, connector: self.connector(to: destination, client: client))
        try client.pipeline.syncOperations.addHandler(bridge.clientChannelHandler)
    }

    /// Where `client` meant to go. Runs on the client's event loop.
    private func originalDestination(of client: Channel) throws -> IPEndpoint {
        guard let local = client.localAddress.flatMap(IPEndpoint.init) else {
            throw ChannelError.operationUnsupported
        }
        return try OriginalDestination.find(
            self.configuration.interception,
            local: local,
            remote: client.remoteAddress.flatMap(IPEndpoint.init)
        ) { ipv6 in
            try LinuxSocketOptions.originalDestination(client, ipv6: ipv6)
        }
    }

    /// How to reach `destination`: from the proxy's own address, or with `--spoof-source` from the client's.
    private func connector(to destination: IPEndpoint, client: Channel) -> any ServerConnector {
        let spoofed = self.configuration.spoofSource
            ? SpoofedSource(
                client: client.remoteAddress, destination: destination.socketAddress,
                interception: self.configuration.interception
            )
            : nil
        return TCPServerConnector(target: .address(destination.socketAddress), spoofedSource: spoofed, holdsHandshakeACK: true)
    }
}
