import Atomics
import CTCPProxyLinux
import Logging
import NIOConcurrencyHelpers
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A forward or transparent listener's socket as the direct engines serve it: accepts clients, admits or
/// turns them away (`--allow`, `--max-connections`; in transparent mode a loop, or no original destination),
/// starts each one's server connection, and logs and counts each bridge's life as a NIO ``Bridge`` does
/// (the same log lines, metrics and close reasons).
///
/// Shared by the engines that watch its socket, so everything in it is immutable or atomic. The
/// per-connection work allocates only the bridge and its two (empty) buffer records; client addresses
/// are made only when `--allow` or an info-level log needs them.
final class DirectAcceptor: Sendable {
    /// The listening socket (non-blocking).
    let descriptor: CInt
    let configuration: BridgeConfiguration
    let metrics: ProxyMetrics?
    let drainSignal: DrainSignal
    private let admission: AdmissionPolicy
    private let activeBridges: AdmissionCounter
    /// Accepting failed for want of descriptors or memory: the warning is logged once per episode. Every
    /// engine thread accepts from this listener; the flag keeps the lock off the path of a normal accept.
    private let exhaustion = NIOLockedValueBox(AcceptExhaustion())
    private let exhausted = ManagedAtomic(false)
    private let destination: Destination
    private let logger: Logger
    /// Whether per-bridge events are logged (the level is info or lower).
    private let logsBridges: Bool
    /// Whether a client's address must be known at accept (`--allow`, or logs).
    private let needsClientAddress: Bool

    /// Where the clients' server connections go.
    enum Destination: Sendable {
        /// Every client to this server (forward).
        case target(SocketAddress)
        /// Each client to its original destination (transparent mode), never to the listener itself; with
        /// `spoofSource`, from the client's own address.
        case original(TransparentConfiguration.Interception, loopGuard: LoopGuard, spoofSource: Bool)
    }

    /// - Parameters:
    ///   - descriptor: the listening socket; the caller closes it after every engine let go of it.
    ///   - destination: where the clients are bridged to.
    init(
        descriptor: CInt,
        destination: Destination,
        configuration: BridgeConfiguration,
        admission: AdmissionPolicy,
        activeBridges: AdmissionCounter,
        metrics: ProxyMetrics?,
        drainSignal: DrainSignal,
        logger: Logger
    ) {
        self.descriptor = descriptor
        self.destination = destination
        self.configuration = configuration
        self.admission = admission
        self.activeBridges = activeBridges
        self.metrics = metrics
        self.drainSignal = drainSignal
        self.logger = logger
        self.logsBridges = logger.logLevel <= .info
        if case .original = destination {
            self.needsClientAddress = true  // the conntrack check compares it; refusals log it
        } else {
            self.needsClientAddress = self.logsBridges || !admission.allow.isEmpty || configuration.sendProxyHeader != nil
        }
    }

    /// What one accept did.
    enum AcceptResult {
        /// No client is waiting (or the accept failed in a way that ends this round).
        case none
        /// A client was dealt with (turned away, or its connect failed at once); accept the next.
        case handled
        /// A client whose bridge the engine now takes.
        case bridge(DirectBridge)
        /// Descriptors ran out: stop accepting for a moment instead of spinning.
        case descriptorsExhausted
    }

    /// An accept succeeded while accepting was failing: the episode may be over.
    private func endExhaustion(now: NIODeadline) {
        let failures: Int? = self.exhaustion.withLockedValue { episode in
            let failures = episode.succeeded(at: now)
            if !episode.isOngoing { self.exhausted.store(false, ordering: .relaxed) }
            return failures
        }
        if let failures { self.logger.info("accepting again", metadata: ["failed.accepts": "\(failures)"]) }
    }

    /// Accepts one client and starts its bridge (on the calling engine's thread).
    func acceptClient(now: NIODeadline) -> AcceptResult {
        var storage = sockaddr_storage()
        var length = UInt32(MemoryLayout<sockaddr_storage>.size)
        let client = withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                CTCPProxyLinux_accept(self.descriptor, $0, &length)
            }
        }
        guard client >= 0 else {
            let error = errno
            switch error {
            case EAGAIN, EWOULDBLOCK:
                return .none
            case EINTR, ECONNABORTED, EPROTO, EPERM:
                return .handled
            case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                let begins = self.exhaustion.withLockedValue { episode in
                    // Set under the lock, so that a success on another thread cannot clear it for this episode.
                    self.exhausted.store(true, ordering: .relaxed)
                    return episode.failed(at: now)
                }
                if begins {
                    self.logger.warning(
                        "accept failed, pausing accepts for 100 ms",
                        metadata: ["error": "\(Self.errorText(error))"]
                    )
                }
                return .descriptorsExhausted
            default:
                self.logger.warning("accept failed", metadata: ["error": "\(Self.errorText(error))"])
                return .none
            }
        }
        if self.exhausted.load(ordering: .relaxed) { self.endExhaustion(now: now) }
        self.metrics?.accepted()
        let address = self.needsClientAddress ? SocketAddress(storage: storage) : nil
        let decision = self.activeBridges.admit(self.admission, address: address)
        guard decision == .admit else {
            let reason: CloseReason = decision == .notAllowed ? .notAllowed : .limitReached
            self.metrics?.rejected(reason)
            self.logger.logConnectionRejected(client: address, reason: reason)
            closeDescriptor(client)
            return .handled
        }
        let target: SocketAddress
        var source: SpoofedSource? = nil
        var headerDestination: SocketAddress? = nil
        switch self.destination {
        case .target(let address):
            target = address
        case .original(let interception, let loopGuard, let spoofSource):
            guard let original = self.originalDestination(of: client, from: address, interception, loopGuard) else {
                self.activeBridges.release()
                closeDescriptor(client)
                return .handled
            }
            target = original
            headerDestination = original
            if spoofSource { source = SpoofedSource(client: address, destination: target, interception: interception) }
        }
        let id = BridgeID.next()
        self.metrics?.bridgeOpened()
        if self.logsBridges { self.logger.logBridgeAccepted(id: id, client: address) }
        var connected: CInt = 0
        let server = Self.connect(to: target, from: source, connected: &connected)
        guard server >= 0 else {
            // Refused at once (no route, descriptors exhausted, a loopback refusal seen within connect(2)): the
            // client is closed as on any failed connect, its bytes read, dropped and counted, so it sees a FIN.
            let error = errno
            self.logConnectFailure(id: id, server: target, error: Self.errorText(error))
            let dropped = UInt64(LinuxSocketOptions.discardInput(descriptor: client))
            if dropped > 0 { self.metrics?.addBytes(upstream: dropped, downstream: 0) }
            closeDescriptor(client)
            self.finish(id: id, reason: .connectFailed, bytes: (dropped, 0), duration: .zero)
            return .handled
        }
        let bridge = DirectBridge(
            id: id, client: client, server: server, serverAddress: target, connected: connected != 0, acceptor: self,
            now: now
        )
        if let version = self.configuration.sendProxyHeader {
            bridge.proxyHeader = Self.proxyHeader(version, client: client, from: address, to: headerDestination)
        }
        return .bridge(bridge)
    }

    /// The PROXY header for `--proxy-protocol`, as the NIO bridge writes it: the client's address and the one
    /// it connected to (the accepted socket's, or a transparent client's original destination).
    private static func proxyHeader(
        _ version: ProxyProtocolVersion,
        client: CInt,
        from remote: SocketAddress?,
        to original: SocketAddress?
    ) -> [UInt8] {
        let local = SocketAddress(descriptor: client, peer: false)
        let header = ProxyHeader(source: remote, destination: original.map { OriginalDestination.inFamily(of: local, $0) } ?? local)
        var buffer = ByteBuffer()
        buffer.writeProxyHeader(header, version)
        return Array(buffer.readableBytesView)
    }

    /// A non-blocking connect to `target`, from a spoofed `source` if given; the descriptor, or -1 with `errno`.
    /// A source port picked in redirect mode that is still held is picked again, as on NIO.
    private static func connect(to target: SocketAddress, from source: SpoofedSource?, connected: inout CInt) -> CInt {
        target.withSockAddr { address, size in
            guard let source else { return CTCPProxyLinux_connect(address, UInt32(size), nil, 0, &connected) }
            var result: CInt = -1
            for _ in 0..<source.attempts {
                result = source.address().withSockAddr { sourceAddress, sourceSize in
                    CTCPProxyLinux_connect(address, UInt32(size), sourceAddress, UInt32(sourceSize), &connected)
                }
                guard result < 0, SpoofedSource.isPortTaken(errno) else { break }
            }
            return result
        }
    }

    /// Where a transparent client meant to go, or `nil` when it is turned away (logged and counted as on NIO).
    private func originalDestination(
        of client: CInt,
        from remote: SocketAddress?,
        _ interception: TransparentConfiguration.Interception,
        _ loopGuard: LoopGuard
    ) -> SocketAddress? {
        let destination: IPEndpoint
        do {
            guard let local = SocketAddress(descriptor: client, peer: false).flatMap(IPEndpoint.init) else {
                throw IOError(errnoCode: errno, reason: "getsockname")
            }
            destination = try OriginalDestination.find(interception, local: local, remote: remote.flatMap(IPEndpoint.init)) {
                try LinuxSocketOptions.originalDestination(descriptor: client, ipv6: $0)
            }
        } catch {
            self.logger.logNoOriginalDestination(client: remote, error: error)
            self.metrics?.rejected(.noOriginalDestination)
            return nil
        }
        guard !loopGuard.isLoop(destination, isLocalAddress: LoopGuard.isLocalAddress) else {
            self.logger.logLoopRefused(client: remote, destination: destination)
            self.metrics?.rejected(.loopRefused)
            return nil
        }
        return destination.socketAddress
    }

    private static func errorText(_ error: CInt) -> String {
        String(cString: strerror(error)).lowercased()
    }

    /// An engine could not watch the listening socket (it is then served by the others, if any).
    func cannotWatch(errno error: CInt) {
        self.logger.error(
            "cannot watch listening socket",
            metadata: ["error": "\(Self.errorText(error))"]
        )
    }

    /// The server connection is up.
    func connected(_ bridge: DirectBridge) {
        guard self.logsBridges else { return }
        self.logger.logBridgeConnected(id: bridge.id, server: bridge.serverAddress.logDescription)
    }

    /// A copying bridge carries bulk and moved to pipes.
    func spliced(_ bridge: DirectBridge) {
        self.logger.debug("bridge spliced", metadata: ["bridge.id": .stringConvertible(bridge.id), "engine": "direct"])
    }

    /// The server connection failed; the bridge ends next (`connectFailed`).
    func connectFailed(_ bridge: DirectBridge, errno error: CInt) {
        self.logConnectFailure(id: bridge.id, server: bridge.serverAddress, error: Self.errorText(error))
    }

    /// `--connect-timeout` gave up the bridge's connect: logged as a failed connect first, as on NIO.
    func connectTimedOut(_ bridge: DirectBridge) {
        self.logConnectFailure(
            id: bridge.id,
            server: bridge.serverAddress,
            error: SystemErrorText.connectTimedOut(after: self.configuration.connectTimeout)
        )
    }

    private func logConnectFailure(id: UInt64, server: SocketAddress?, error: String) {
        self.logger.logBridgeConnectFailed(id: id, server: server.logDescription, error: error)
    }

    /// Both sockets are closed: log the end, count it, and give the slot back.
    func bridgeEnded(_ bridge: DirectBridge, reason: CloseReason, now: NIODeadline) {
        self.finish(
            id: bridge.id,
            reason: reason,
            bytes: (bridge.bytesUpstream, bridge.bytesDownstream),
            duration: now - bridge.startTime
        )
    }

    private func finish(id: UInt64, reason: CloseReason, bytes: (upstream: UInt64, downstream: UInt64), duration: TimeAmount) {
        // The slot first: a client that connects once it has seen `bridge closed` must find it free.
        self.activeBridges.release()
        if self.logsBridges {
            self.logger.logBridgeClosed(
                id: id, reason: reason, upstream: bytes.upstream, downstream: bytes.downstream, duration: duration
            )
        }
        self.metrics?.bridgeClosed(reason, duration: duration)
    }
}

