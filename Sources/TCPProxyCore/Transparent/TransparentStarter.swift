import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// `transparent` mode: each client is bridged to its original destination, the address it meant to reach
/// before the firewall sent it to this listener (SPEC §3).
///
/// - `tproxy`: the accepted socket's local address *is* the original destination (TPROXY keeps it).
/// - `redirect`: the kernel's conntrack remembers it (`SO_ORIGINAL_DST`, `IP6T_SO_ORIGINAL_DST`).
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
            setup.logger.warning(
                "connection rejected: no original destination",
                metadata: [
                    "client.address": "\(client.remoteAddress.logDescription)",
                    "close.reason": "\(CloseReason.noOriginalDestination)",
                    "error": "\(Self.describe(error))",
                ]
            )
            setup.observers.metrics?.rejected(.noOriginalDestination)
            throw ClientRefusal(reason: .noOriginalDestination)
        }
        if let listener = client.parent?.localAddress.flatMap(IPEndpoint.init),
            LoopGuard(listener: listener).isLoop(destination, isLocalAddress: LoopGuard.isLocalAddress)
        {
            setup.logger.warning(
                "connection rejected: its original destination is this listener",
                metadata: [
                    "client.address": "\(client.remoteAddress.logDescription)",
                    "close.reason": "\(CloseReason.loopRefused)",
                    "original.destination": "\(destination)",
                ]
            )
            setup.observers.metrics?.rejected(.loopRefused)
            throw ClientRefusal(reason: .loopRefused)
        }
        let bridge = setup.makeBridge(client: client, connector: self.connector(to: destination, client: client))
        try client.pipeline.syncOperations.addHandler(bridge.clientChannelHandler)
    }

    /// Where `client` meant to go. Runs on the client's event loop.
    private func originalDestination(of client: Channel) throws -> IPEndpoint {
        guard let local = client.localAddress.flatMap(IPEndpoint.init) else {
            throw ChannelError.operationUnsupported
        }
        switch self.configuration.interception {
        case .tproxy:
            return local
        case .redirect:
            // An IPv4 client of a dual-stack listener has an IPv4-mapped local address: its conntrack entry
            // is IPv4, and `SOL_IP` works on that IPv6 socket.
            let bytes = try LinuxSocketOptions.originalDestination(client, ipv6: !local.isIPv4)
            guard let destination = IPEndpoint(sockaddr: bytes) else { throw ChannelError.operationUnsupported }
            let remote = client.remoteAddress.flatMap(IPEndpoint.init)
            // When the client's packets were not tracked (a NOTRACK rule), the proxy's own packets to the
            // client may start an entry, and what it gives as the original destination is the client itself.
            if let remote, remote.address == destination.address, remote.port == destination.port {
                throw OriginalDestinationError.reflected
            }
            // The kernel names the interface of a link-local destination when the client came from a
            // link-local address too; the accepted socket's addresses are the fallback.
            return destination.scoped(like: remote).scoped(like: local)
        }
    }

    /// An original destination that is none.
    enum OriginalDestinationError: Error, CustomStringConvertible {
        /// conntrack's entry began with the proxy's own packets, so it names the client as the destination.
        case reflected

        var description: String {
            "conntrack tracked this connection from the proxy's side only, not the client's packets: nothing redirected it"
        }
    }

    /// Why the original destination could not be read, in words.
    private static func describe(_ error: Error) -> String {
        if let error = error as? IOError, error.errnoCode == ENOENT {
            return "conntrack has no entry for this connection: nothing redirected it"
        }
        return SystemErrorText.describe(error)
    }

    /// How to reach `destination`: from the proxy's own address, or with `--spoof-source` from the client's.
    private func connector(to destination: IPEndpoint, client: Channel) -> any ServerConnector {
        if self.configuration.spoofSource, let source = client.remoteAddress.flatMap(IPEndpoint.init),
            source.isIPv4 == destination.isIPv4
        {
            return TCPServerConnector(
                target: .address(destination.socketAddress),
                spoofedSource: source.with(port: 0).socketAddress,
                holdsHandshakeACK: true
            )
        }
        return TCPServerConnector(target: .address(destination.socketAddress), holdsHandshakeACK: true)
    }
}
