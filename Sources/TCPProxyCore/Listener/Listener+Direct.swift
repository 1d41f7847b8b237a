import CTCPProxyLinux
import NIOCore
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A listener served by the direct engines (`--engine auto|direct`, docs/BRIDGE.md "The direct engine"):
/// one listening socket, watched by one engine thread per `--threads`; the kernel wakes one of them per
/// connection (EPOLLEXCLUSIVE). No NIO channel is made for a client or its server.
extension Listener {
    /// The target and engines when this listener runs on the direct engine; `nil` for NIO.
    func directPlan() -> (target: SocketAddress, engines: [DirectEngine])? {
        let engine = self.configuration.bridge.engine
        guard engine != .nio, self.configuration.directEngineObstacle(capturing: self.observers.capture != nil) == nil,
            case .forward(let forward) = self.configuration.mode,
            case .address(let target) = ConnectTarget(forward.targets[0].endpoint)
        else { return nil }
        let threads = max(1, self.group.makeIterator().reduce(0) { count, _ in count + 1 })
        guard let engines = DirectEngine.pool(count: threads) else { return nil }
        return (target, engines)
    }

    /// Binds, accepts on the engines until a graceful shutdown, then drains.
    func runDirect(target: SocketAddress, engines: [DirectEngine]) async throws {
        let listen = self.configuration.listen
        let descriptor: CInt
        do {
            let address = try SocketAddress.makeAddressResolvingHost(listen.host, port: listen.port)
            descriptor = address.withSockAddr { pointer, size in
                CTCPProxyLinux_listen(pointer, UInt32(size), 4096)
            }
            guard descriptor >= 0 else { throw IOError(errnoCode: errno, reason: "bind") }
        } catch {
            throw ListenerError(endpoint: listen, underlying: error)
        }
        let bound = Self.localAddress(of: descriptor)
        self.setBoundAddress(bound)
        self.logger.info(
            "listening on \(bound?.logDescription ?? listen.description)",
            metadata: ["mode": "\(self.configuration.mode)", "engine": "direct"]
        )
        let acceptor = DirectAcceptor(
            descriptor: descriptor,
            target: target,
            configuration: self.configuration.bridge,
            admission: self.configuration.admission,
            activeBridges: self.activeBridges,
            nextBridgeID: self.nextBridgeID,
            metrics: self.observers.metrics,
            drainSignal: self.spliceDrain,
            logger: self.logger
        )
        for engine in engines { engine.addListener(acceptor) }

        try? await gracefulShutdown()

        await ListenerDrain.run(bridge: self.configuration.bridge, logger: self.logger, active: { self.activeBridgeCount }) {
            for engine in engines { await engine.removeListener(acceptor) }
            closeDescriptor(descriptor)
            self.spliceDrain.beginDrain(timeout: self.configuration.bridge.drainTimeout)
        }
        self.logger.info("listener stopped")
    }

    private static func localAddress(of descriptor: CInt) -> SocketAddress? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        return result == 0 ? SocketAddress(storage: storage) : nil
    }
}
