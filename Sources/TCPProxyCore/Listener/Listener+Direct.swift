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
    /// Where the clients go and the engines, when this listener runs on the direct engine; `nil` for NIO.
    func directPlan() -> (destination: DirectDestination, engines: [DirectEngine])? {
        let engine = self.configuration.bridge.engine
        guard engine != .nio, self.configuration.directEngineObstacle(capturing: self.observers.capture != nil) == nil
        else { return nil }
        let destination: DirectDestination
        switch self.configuration.mode {
        case .forward(let forward):
            guard case .address(let target) = ConnectTarget(forward.targets[0].endpoint) else { return nil }
            destination = .target(target)
        case .transparent(let transparent):
            destination = .original(transparent)
        case .socks:
            return nil
        }
        let threads = max(1, self.group.makeIterator().reduce(0) { count, _ in count + 1 })
        guard let engines = DirectEngine.pool(count: threads) else {
            self.logger.warning("the direct engine cannot start (no epoll or eventfd), serving on NIO")
            return nil
        }
        return (destination, engines)
    }

    /// Where a direct listener's clients go: ``DirectAcceptor/Destination`` before the listener is bound.
    enum DirectDestination {
        case target(SocketAddress)
        case original(TransparentConfiguration)
    }

    /// Binds, accepts on the engines until a graceful shutdown, then drains.
    ///
    /// One listening socket shared by every engine (EPOLLEXCLUSIVE). `TCPPROXY_DIRECT_REUSEPORT=1` instead
    /// gives each engine a socket of its own bound with SO_REUSEPORT: a measurement switch only
    /// (docs/BENCHMARKS.md, "Two threads, and one listening socket against SO_REUSEPORT"), not an option.
    func runDirect(destination planned: DirectDestination, engines: [DirectEngine]) async throws {
        let listen = self.configuration.listen
        let reusePort = getenv("TCPPROXY_DIRECT_REUSEPORT").map { String(cString: $0) == "1" } ?? false
        var transparent = false
        var descriptors: [CInt] = []
        do {
            if case .original(let configuration) = planned {
                transparent = configuration.interception == .tproxy
                // A redirect listener needs no privilege itself: spoofing is checked now, not at the first client.
                if configuration.spoofSource && !transparent { try LinuxSocketOptions.checkTransparentPermitted() }
            }
            var address = try SocketAddress.makeAddressResolvingHost(listen.host, port: listen.port)
            for _ in 0..<(reusePort ? engines.count : 1) {
                let descriptor = address.withSockAddr { pointer, size in
                    CTCPProxyLinux_listen(pointer, UInt32(size), 4096, reusePort ? 1 : 0, transparent ? 1 : 0)
                }
                guard descriptor >= 0 else {
                    if transparent, errno == EPERM {
                        let option = if case .v6 = address { "IPV6_TRANSPARENT" } else { "IP_TRANSPARENT" }
                        throw TransparentError.transparentNotPermitted(option: option)
                    }
                    throw IOError(errnoCode: errno, reason: "bind")
                }
                descriptors.append(descriptor)
                // Port 0: the other sockets of the group take the port the first one got.
                if let bound = SocketAddress(descriptor: descriptor, peer: false) { address = bound }
            }
        } catch {
            descriptors.forEach(closeDescriptor)
            throw ListenerError(endpoint: listen, underlying: error)
        }
        let bound = SocketAddress(descriptor: descriptors[0], peer: false)
        self.setBoundAddress(bound)
        let destination: DirectAcceptor.Destination
        switch planned {
        case .target(let target):
            destination = .target(target)
        case .original(let configuration):
            guard let listener = bound.flatMap(IPEndpoint.init) else {
                descriptors.forEach(closeDescriptor)
                throw ListenerError(endpoint: listen, underlying: IOError(errnoCode: EINVAL, reason: "getsockname"))
            }
            destination = .original(
                configuration.interception,
                loopGuard: LoopGuard(listener: listener),
                spoofSource: configuration.spoofSource
            )
        }
        let acceptors = descriptors.map { descriptor in
            DirectAcceptor(
                descriptor: descriptor,
                destination: destination,
                configuration: self.configuration.bridge,
                admission: self.configuration.admission,
                activeBridges: self.activeBridges,
                metrics: self.observers.metrics,
                drainSignal: self.spliceDrain,
                logger: self.logger
            )
        }
        let watches = engines.enumerated().map { index, engine in (engine, acceptors[index % acceptors.count]) }
        // Ready once every engine watches the socket, with what it set up for it (its ring) in place.
        var batching = 0
        for (engine, acceptor) in watches where await engine.addListener(acceptor) { batching += 1 }
        self.logger.logReady(
            "listening on \(bound?.logDescription ?? listen.description)",
            metadata: [
                "mode": "\(self.configuration.mode)", "engine": "direct",
                // Whether the engine threads batch their reads and writes (docs/BRIDGE.md).
                "io": batching == watches.count ? "io_uring" : batching == 0 ? "syscalls" : "io_uring on \(batching) of \(watches.count) threads",
            ]
        )
        self.configuration.admission.warnAboutHostBits(self.logger)

        try? await gracefulShutdown()

        await ListenerDrain.run(bridge: self.configuration.bridge, logger: self.logger, active: { self.activeBridgeCount }) {
            for (engine, acceptor) in watches { await engine.removeListener(acceptor) }
            descriptors.forEach(closeDescriptor)
            self.spliceDrain.beginDrain(timeout: self.configuration.bridge.drainTimeout)
        }
        self.logger.info("listener stopped")
    }
}
