import Logging
import NIOCore

/// The first handler of a SOCKS client: it reads the handshake through a ``SOCKSServerStateMachine``, writes
/// the replies the handshake needs, and on a CONNECT hands the channel over to a ``Bridge`` that dials the
/// destination with a ``SOCKSConnector``.
///
/// The handshake is bounded in time (`--handshake-timeout`) and in memory: the parsers reject every field
/// that grows past its limit, so at most one handshake message plus one read is held. The request's reply
/// waits for the server connection (``Bridge/Hooks``): success carries the server socket's real bound
/// address, a failure the code for what went wrong.
final class SOCKSHandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum Phase {
        /// Reading the handshake.
        case handshaking
        /// The handshake failed or timed out; the channel is closing and will be reported with this reason.
        case closing(CloseReason)
        /// A bridge took over the channel, and reports it.
        case handedOver
        /// Reported.
        case done
    }

    private var machine: SOCKSServerStateMachine
    private var phase = Phase.handshaking
    private var buffer: ByteBuffer?
    private var timer: Scheduled<Void>?
    private var startTime: NIODeadline?
    /// The listener began draining during the handshake: the bridge is told once it exists.
    private var quiesceRequested = false

    private let setup: BridgeSetup
    private let socks: SOCKSConfiguration
    private let makeConnector: (SOCKSServerStateMachine.ConnectRequest) -> any ServerConnector

    /// - Parameters:
    ///   - setup: what the listener gives the bridge this client will get.
    ///   - socks: users and handshake timeout.
    ///   - makeConnector: how a request's server is reached (a ``SOCKSConnector`` outside tests).
    init(
        setup: BridgeSetup,
        socks: SOCKSConfiguration,
        makeConnector: @escaping (SOCKSServerStateMachine.ConnectRequest) -> any ServerConnector
    ) {
        self.setup = setup
        self.socks = socks
        self.makeConnector = makeConnector
        self.machine = SOCKSServerStateMachine(users: socks.users)
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.startTime = context.eventLoop.now
        if context.channel.isActive { self.startTimer(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.startTimer(context: context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .handshaking = self.phase else { return }
        var incoming = self.unwrapInboundIn(data)
        if self.buffer == nil {
            self.buffer = incoming
        } else {
            self.buffer!.writeBuffer(&incoming)
        }
        self.advance(context: context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case is ChannelShouldQuiesceEvent:
            // The listener drains: no new server connection is opened (a request that completes now is
            // refused), and a handshake still going on is cut at the drain timeout, as a bridge would be.
            self.quiesceRequested = true
            if case .handshaking = self.phase, let drainTimeout = self.setup.configuration.drainTimeout,
                let startTime = self.startTime, context.eventLoop.now + drainTimeout < startTime + self.socks.handshakeTimeout
            {
                self.cancelTimer()
                self.startTimer(context: context, in: drainTimeout, reason: .drainTimeout, error: "the proxy is shutting down")
            }
        case ChannelEvent.inputClosed:
            // The client stopped sending before its request was complete: it never will be.
            self.fail(context: context, reason: .clientReset, error: "client closed during the handshake")
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        self.fail(context: context, reason: .clientReset, error: SystemErrorText.describe(error))
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.channelEnded(context: context)
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        // A pipeline torn down without `channelInactive` (a channel that never became active) ends here too.
        self.channelEnded(context: context)
    }

    // MARK: The handshake

    /// Feeds the machine until it needs more bytes or the handshake is over.
    private func advance(context: ChannelHandlerContext) {
        while case .handshaking = self.phase, self.buffer != nil {
            let action = self.machine.receive(&self.buffer!)
            switch action {
            case .needMore:
                self.buffer!.discardReadBytes()
                return
            case .send(let reply):
                self.write(reply, context: context)
                context.flush()
            case .connect(let request):
                self.countRequest()
                guard !self.quiesceRequested else {
                    let reply: SOCKSReply =
                        switch request.version {
                        case .socks4, .socks4a: .socks4(.init(code: .rejected))
                        case .socks5: .socks5(.init(code: .generalFailure))
                        }
                    self.fail(context: context, reason: .drainTimeout, error: "the proxy is shutting down", reply: reply)
                    return
                }
                self.handOver(request, context: context)
            case .fail(let error):
                self.countRequest()
                if error.isAuthenticationFailure { self.setup.observers.metrics?.socksAuthenticationFailed() }
                let reason: CloseReason = error.isAuthenticationFailure ? .notAllowed : .handshakeFailed
                self.fail(context: context, reason: reason, error: "\(error)", reply: error.reply)
            }
        }
    }

    private func countRequest() {
        if let version = self.machine.requestVersion { self.setup.observers.metrics?.socksHandshake(version) }
    }

    /// Builds the bridge for `request`, passes it the bytes that followed the request, and leaves the pipeline.
    private func handOver(_ request: SOCKSServerStateMachine.ConnectRequest, context: ChannelHandlerContext) {
        self.phase = .handedOver
        self.cancelTimer()
        self.setup.logger.debug(
            "socks request",
            metadata: [
                "bridge.id": .stringConvertible(self.setup.id), "client.address": "\(self.clientAddress(context).logDescription)",
                "socks.version": "\(request.version)", "socks.destination": "\(request.destination)",
                "socks.user": "\(request.user ?? "-")",
            ]
        )

        var setup = self.setup
        let version = request.version
        let metrics = setup.observers.metrics
        // Both run on the event loop before the bridge forwards a byte or closes the client.
        setup.hooks.serverConnected = { client, server in
            SOCKSHandshakeHandler.send(.success(version, bound: server.localAddress), to: client, metrics: metrics)
        }
        setup.hooks.connectFailed = { client, error in
            SOCKSHandshakeHandler.send(.failure(version, error), to: client, metrics: metrics)
        }
        let bridge = setup.makeBridge(client: context.channel, connector: self.makeConnector(request))
        do {
            // The bridge's handler starts the connect in `handlerAdded`, the channel being active.
            try context.pipeline.syncOperations.addHandler(bridge.clientChannelHandler, position: .after(self))
        } catch {
            // The channel is closing: nobody else will report it.
            self.phase = .closing(.clientReset)
            context.close(promise: nil)
            return
        }
        if let rest = self.buffer, rest.readableBytes > 0 {
            context.fireChannelRead(self.wrapInboundOut(rest))
        }
        self.buffer = nil
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    /// Ends the handshake: writes `reply` if there is one, then closes.
    private func fail(context: ChannelHandlerContext, reason: CloseReason, error: String, reply: SOCKSReply? = nil) {
        guard case .handshaking = self.phase else { return }
        self.phase = .closing(reason)
        self.cancelTimer()
        self.buffer = nil
        self.setup.logger.info(
            "socks handshake failed",
            metadata: [
                "bridge.id": .stringConvertible(self.setup.id), "client.address": "\(self.clientAddress(context).logDescription)",
                "error": "\(error)", "close.reason": "\(reason)",
            ]
        )
        guard let reply else {
            context.close(promise: nil)
            return
        }
        if let code = reply.code { self.setup.observers.metrics?.socksReplied(code) }
        let loopBoundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        self.write(reply, context: context)
            .assumeIsolated()
            .whenComplete { _ in loopBoundContext.value.close(promise: nil) }
        context.flush()
    }

    private func startTimer(context: ChannelHandlerContext) {
        self.startTimer(context: context, in: self.socks.handshakeTimeout, reason: .handshakeTimeout, error: "handshake timed out")
    }

    private func startTimer(context: ChannelHandlerContext, in delay: TimeAmount, reason: CloseReason, error: String) {
        guard self.timer == nil, case .handshaking = self.phase else { return }
        let loopBoundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        self.timer = context.eventLoop.assumeIsolated().scheduleTask(in: delay) {
            self.timer = nil
            self.fail(context: loopBoundContext.value, reason: reason, error: error)
        }
    }

    private func cancelTimer() {
        self.timer?.cancel()
        self.timer = nil
    }

    /// The client's channel closed: report it unless a bridge did or will.
    private func channelEnded(context: ChannelHandlerContext) {
        let reason: CloseReason
        switch self.phase {
        case .handshaking: reason = .clientReset
        case .closing(let closingReason): reason = closingReason
        case .handedOver, .done: return
        }
        if case .handshaking = self.phase {
            self.setup.logger.info(
                "socks handshake failed",
                metadata: [
                    "bridge.id": .stringConvertible(self.setup.id), "client.address": "\(self.clientAddress(context).logDescription)",
                    "error": "client closed during the handshake", "close.reason": "\(reason)",
                ]
            )
        }
        self.phase = .done
        self.cancelTimer()
        self.buffer = nil
        let duration = self.startTime.map { context.eventLoop.now - $0 } ?? .zero
        self.setup.observers.metrics?.bridgeClosed(reason, duration: duration)
        self.setup.hooks.finished(reason)
    }

    /// The client, as a PROXY header received from it describes it, or as its socket says.
    private func clientAddress(_ context: ChannelHandlerContext) -> SocketAddress? {
        self.setup.announcedClient?.source ?? context.channel.remoteAddress
    }

    // MARK: Writing replies

    @discardableResult
    private func write(_ reply: SOCKSReply, context: ChannelHandlerContext) -> EventLoopFuture<Void> {
        var bytes = context.channel.allocator.buffer(capacity: 24)
        bytes.writeSOCKSReply(reply)
        return context.write(self.wrapOutboundOut(bytes))
    }

    /// Writes and flushes the reply to a request (from the bridge's hooks).
    private static func send(_ reply: SOCKSReply, to client: Channel, metrics: ProxyMetrics?) {
        if let code = reply.code { metrics?.socksReplied(code) }
        var bytes = client.allocator.buffer(capacity: 24)
        bytes.writeSOCKSReply(reply)
        client.writeAndFlush(bytes, promise: nil)
    }
}

@available(*, unavailable)
extension SOCKSHandshakeHandler: Sendable {}

extension SOCKSReply {
    /// The reply to a request whose server connection is up, bound at `address`.
    static func success(_ version: SOCKSVersion, bound address: SocketAddress?) -> SOCKSReply {
        switch version {
        case .socks4, .socks4a: .socks4(.init(code: .granted, boundAddress: address))
        case .socks5: .socks5(.init(code: .succeeded, boundAddress: address))
        }
    }

    /// The reply to a request whose server connection failed with `error`.
    static func failure(_ version: SOCKSVersion, _ error: Error) -> SOCKSReply {
        switch version {
        case .socks4, .socks4a: .socks4(.init(code: .rejected))
        case .socks5: .socks5(.init(code: .forConnectError(error)))
        }
    }
}
