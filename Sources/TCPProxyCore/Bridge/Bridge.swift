import Logging
import NIOCore
import NIOPosix

/// One client connection plus its server connection, and the glue between them.
///
/// Both channels live on the client's event loop, so the bridge needs no locks. Each channel carries
/// one ``BridgeHandler`` that reports events here; the ``BridgeStateMachine`` decides, and this class
/// carries out its actions. Bytes pass from one channel to the other as the same `ByteBuffer`s, with
/// no copy; a channel is read only while its partner can take more (`writeBufferWaterMark`).
final class Bridge {
    typealias Side = BridgeStateMachine.Side

    /// Who the bridge reports to: when it ends, and (for modes with a handshake) how its connect went.
    struct Hooks {
        /// Called once, when both sockets are closed.
        var finished: (_ reason: CloseReason) -> Void
        /// Called when the server connection is up, before any byte is forwarded to the client: a SOCKS
        /// listener writes and flushes its success reply to `client` here.
        var serverConnected: ((_ client: Channel, _ server: Channel) -> Void)? = nil
        /// Called when the server connection failed, before the client is closed: a SOCKS listener
        /// writes and flushes its failure reply to `client` here.
        var connectFailed: ((_ client: Channel, _ error: Error) -> Void)? = nil
    }

    /// Where the bridge reports what it carries: the process's capture file, the listener's metrics.
    struct Observers {
        var capture: CaptureWriter? = nil
        var metrics: ProxyMetrics? = nil
    }

    /// The client as a PROXY header received from it (`--accept-proxy-protocol`) describes it; `nil` to
    /// use the socket's own addresses.
    var announcedClient: ProxyHeader?
    /// The address the client connected to, when it is not the client socket's local address (a transparent
    /// client's original destination); `nil` to use the socket's.
    var clientDestination: SocketAddress?

    let id: UInt64
    let configuration: BridgeConfiguration
    private let connector: any ServerConnector
    /// The server connections being tried, while the connect is pending.
    private var connectAttempts: ConnectAttempts?
    let eventLoop: EventLoop
    let logger: Logger
    private let hooks: Hooks
    let observers: Observers
    private let startTime: NIODeadline
    /// This bridge's conversation in the `--capture` file, once the server is connected.
    var conversation: CaptureConversation?
    /// Whether chunks go straight from one socket to the other (no option needs to see them).
    var isPlainPath = true
    /// The client channel became active and the bridge began (or it was given up before that).
    private var started = false
    /// Bytes already added to the metrics.
    var byteReporter = ByteCountReporter()
    /// Whether the bridge may move, or has moved, to the splice engine (see `Bridge+Splice.swift`).
    var spliceStage = SpliceStage.off
    /// Handovers begun so far.
    var spliceAttempts = 0
    /// Gives up a handover whose barrier takes too long (see `Bridge+Splice.swift`).
    var spliceTimer: Scheduled<Void>?
    /// The listener's drain, for the bridge once it is spliced.
    let spliceDrain: DrainSignal?

    var machine = BridgeStateMachine()
    var timeouts: BridgeTimeouts
    /// The sampling timer (``startTimer()``), while it is armed.
    var timer: NIOScheduledCallback?
    var drainTimer: Scheduled<Void>?

    let clientHandler: BridgeHandler
    let serverHandler: BridgeHandler
    private(set) var serverChannel: Channel?

    /// Rate limits, latency and corruption, when an option asks for them (see `Bridge+Shaping.swift`).
    var shaping: BridgeShaping?
    /// Per direction: the timer that resumes a rate-limited read, and the one that delivers delayed chunks.
    var rateTimers: [Scheduled<Void>?] = [nil, nil]
    var delayTimers: [Scheduled<Void>?] = [nil, nil]
    /// Bytes of delayed chunks (`--latency`, or a rate pacing what came with a FIN) written so far: traffic
    /// for the idle timeout, though nothing is read meanwhile.
    var delayedBytesWritten: UInt64 = 0

    /// What the client sent before the server connection was up (SPEC §2 rule 2), at most about one
    /// high-water mark: reading pauses once it is full.
    private var earlyData = CircularBuffer<ByteBuffer>(initialCapacity: 1)
    private var earlyDataBytes = 0

    /// Bytes read from the client (upstream) and from the server (downstream).
    var bytesUpstream: UInt64 = 0
    var bytesDownstream: UInt64 = 0

    /// - Parameters:
    ///   - id: the bridge number, for logs.
    ///   - clientChannel: the accepted connection; the bridge installs its handler in it.
    ///   - connector: how to reach the server.
    ///   - configuration: limits and timeouts.
    ///   - logger: the listener's logger.
    ///   - hooks: the listener's bookkeeping.
    ///   - spliceDrain: the listener's drain, as spliced bridges see it.
    init(
        id: UInt64,
        clientChannel: Channel,
        connector: any ServerConnector,
        configuration: BridgeConfiguration,
        logger: Logger,
        hooks: Hooks,
        observers: Observers = .init(),
        spliceDrain: DrainSignal? = nil
    ) {
        self.id = id
        self.connector = connector
        self.configuration = configuration
        self.eventLoop = clientChannel.eventLoop
        self.logger = logger
        self.hooks = hooks
        self.observers = observers
        self.spliceDrain = spliceDrain
        let now = clientChannel.eventLoop.now
        self.startTime = now
        self.timeouts = BridgeTimeouts(
            stallTimeout: configuration.stallTimeout,
            idleTimeout: configuration.idleTimeout,
            reportInterval: observers.metrics == nil ? nil : BridgeTimeouts.metricsReportInterval,
            now: now
        )
        if configuration.shapesChunks {
            self.shaping = BridgeShaping(configuration: configuration, now: now)
            self.isPlainPath = false
        }
        self.clientHandler = BridgeHandler(side: .client)
        self.serverHandler = BridgeHandler(side: .server)
        self.clientHandler.bridge = self
        self.serverHandler.bridge = self
    }

    /// The handler to put into the client channel's pipeline.
    var clientChannelHandler: BridgeHandler { self.clientHandler }

    func handler(_ side: Side) -> BridgeHandler {
        side == .client ? self.clientHandler : self.serverHandler
    }

    // MARK: Events from the handlers

    /// The client's channel went away without ever becoming active (its registration failed): the
    /// bridge never started, so it ends here and gives back its `--max-connections` slot.
    func clientHandlerRemoved() {
        guard !self.started else { return }
        self.started = true
        self.observers.metrics?.bridgeClosed(.clientReset, duration: .zero)
        self.hooks.finished(.clientReset)
        self.clientHandler.bridge = nil
        self.serverHandler.bridge = nil
    }

    /// The client channel is active: log it, watch for its close, and dial the server.
    func clientActive(_ channel: Channel) {
        guard !self.started else { return }
        self.started = true
        self.reportClose(of: channel, as: .client)
        self.logger.logBridgeAccepted(id: self.id, client: self.announcedClient?.source ?? channel.remoteAddress)
        self.connect()
    }

    /// Whether `side` may be read now: only while what it feeds can take more.
    func mayRead(_ side: Side) -> Bool {
        if self.spliceHoldsReads { return false }
        if self.machine.isForwarding {
            guard self.handler(side.partner).context?.channel.isWritable ?? false else { return false }
            return self.shaping == nil || self.shapingAllowsRead(side)
        }
        if self.machine.isClosing { return false }
        // Connecting: the client may fill the early-data buffer up to the high-water mark.
        guard side == .client, self.earlyDataBytes < self.configuration.highWaterMark else { return false }
        return self.shaping == nil || self.shapingAllowsRead(side)
    }

    /// Bytes arrived from `side`.
    func received(_ buffer: ByteBuffer, from side: Side) {
        let count = UInt64(buffer.readableBytes)
        if self.machine.isForwarding {
            switch side {
            case .client: self.bytesUpstream &+= count
            case .server: self.bytesDownstream &+= count
            }
            if self.isPlainPath {
                self.handler(side.partner).forward(buffer)
                self.spliceObserve(buffer.readableBytes, from: side)
            } else {
                self.shape(buffer, from: side, countingRate: true)
            }
            if self.timer == nil { self.startTimer() }
        } else if self.machine.isClosing {
            // Read as the bridge closes (NIO finishes a read burst it began): dropped, but counted as read,
            // as the direct engine counts what it drops.
            switch side {
            case .client: self.bytesUpstream &+= count
            case .server: self.bytesDownstream &+= count
            }
        } else if side == .client {
            self.bytesUpstream &+= count
            self.earlyDataBytes += buffer.readableBytes
            self.earlyData.append(buffer)
            self.shaping?.consume(buffer.readableBytes, .upstream, now: self.eventLoop.now)
        }
    }

    /// A read burst from `side` ended: push what was forwarded.
    func readComplete(from side: Side) {
        self.handler(side.partner).flushIfNeeded()
        self.spliceReadBurstEnded()
    }

    /// `side` can take more again: let its partner be read if it was waiting.
    func becameWritable(_ side: Side) {
        self.spliceRetryIfWaiting()
        self.handler(side.partner).resumeReadingIfPaused()
    }

    func inputClosed(on side: Side) {
        guard !self.isHandedOver else { return }
        self.abandonHandover()
        self.perform(self.machine.inputClosed(on: side))
    }

    func outputClosed(on side: Side) {
        guard !self.isHandedOver else { return }
        self.abandonHandover()
        self.perform(self.machine.outputClosed(on: side))
        self.spliceRetryIfWaiting()
    }

    func errorCaught(on side: Side, _ error: Error) {
        guard !self.isHandedOver else { return }
        self.abandonHandover()
        self.logger.debug(
            "bridge error",
            metadata: ["bridge.id": .stringConvertible(self.id), "side": "\(side)", "error": "\(error)"]
        )
        self.perform(self.machine.errorCaught(on: side))
    }

    func channelClosed(_ side: Side) {
        // At the handover NIO closes both channels; the sockets live on in the splice engine.
        guard !self.isHandedOver else { return }
        self.abandonHandover()
        if side == .server { self.serverHandler.connectionEnded() }
        self.logger.trace("bridge socket closed", metadata: ["bridge.id": .stringConvertible(self.id), "side": "\(side)"])
        self.perform(self.machine.channelClosed(side))
    }

    /// The listener is draining: give the bridge until the drain timeout to finish on its own.
    func quiesceRequested() {
        guard !self.isHandedOver, let drainTimeout = self.configuration.drainTimeout else { return }
        guard self.drainTimer == nil else { return }
        self.drainTimer = self.eventLoop.assumeIsolated().scheduleTask(in: drainTimeout) {
            // A connect still pending is given up: a SOCKS client waiting on it gets its failure reply first,
            // as for a connect that failed (SPEC §2 rule 3), not a close without a word.
            if self.machine.isConnecting, let client = self.clientHandler.context?.channel {
                self.hooks.connectFailed?(client, ShuttingDown())
            }
            self.perform(self.machine.abort(.drainTimeout))
        }
    }

    /// Why a pending connect was given up at the drain timeout.
    struct ShuttingDown: Error, CustomStringConvertible {
        var description: String { "the proxy is shutting down" }
    }

    // MARK: Connecting

    private func connect() {
        let serverHandler = NIOLoopBound(self.serverHandler, eventLoop: self.eventLoop)
        let attempts = ConnectAttempts(eventLoop: self.eventLoop)
        self.connectAttempts = attempts
        let connected = self.connector.connect(on: self.eventLoop, configuration: self.configuration, attempts: attempts) {
            channel in
            try channel.pipeline.syncOperations.addHandler(serverHandler.value)
        }
        // The closure captures `self` alone (no context to allocate): the attempts are read back from it.
        connected.assumeIsolated().whenComplete { result in
            let givenUp = self.connectAttempts?.isCancelled ?? false
            self.connectAttempts?.finished()
            self.connectAttempts = nil
            switch result {
            case .success(let channel):
                self.serverChannel = channel
                self.reportClose(of: channel, as: .server)
                if self.machine.isConnecting, let client = self.clientHandler.context?.channel {
                    self.hooks.serverConnected?(client, channel)
                }
                self.perform(self.machine.connectSucceeded())
            case .failure(let error):
                let timedOut = isConnectTimeout(error)
                // A connect the bridge gave up on (it ended first) did not fail.
                if !givenUp {
                    self.logger.logBridgeConnectFailed(
                        id: self.id, server: self.connector.targetDescription, error: SystemErrorText.describe(error)
                    )
                }
                if self.machine.isConnecting, let client = self.clientHandler.context?.channel {
                    self.hooks.connectFailed?(client, error)
                }
                self.perform(self.machine.connectFailed(timedOut: timedOut))
                self.perform(self.machine.serverNeverOpened())
            }
        }
    }

    /// Writes a PROXY header to the server, before any byte of the client's: the real client (as the
    /// client socket, or a header received from it, says) and the address it connected to.
    private func sendProxyHeader(_ version: ProxyProtocolVersion) {
        let client = self.clientHandler.context?.channel
        let header = ProxyHeader(
            source: self.announcedClient?.source ?? client?.remoteAddress,
            destination: self.announcedClient?.destination ?? self.clientDestination ?? client?.localAddress
        )
        var buffer = ByteBuffer()
        buffer.writeProxyHeader(header, version)
        self.serverHandler.forward(buffer)
    }

    /// Feeds the close of `channel` to the machine when it happens. A channel's `closeFuture` completes
    /// exactly once however it closes; `channelInactive` is not delivered when a channel is closed from
    /// inside its own connect completion, which is where a bridge whose client already left ends.
    private func reportClose(of channel: Channel, as side: Side) {
        channel.closeFuture.assumeIsolated().whenComplete { _ in
            self.channelClosed(side)
        }
    }

    // MARK: Carrying out actions

    func perform(_ action: BridgeStateMachine.Action) {
        self.logger.trace("bridge action", metadata: ["bridge.id": .stringConvertible(self.id), "action": "\(action)"])
        switch action {
        case .none:
            break

        case .startForwarding(let thenShutdownServerOutput):
            self.byteReporter.target = self.serverHandler.targetMetrics
            self.logger.logBridgeConnected(
                id: self.id,
                server: self.serverChannel?.remoteAddress?.logDescription ?? self.connector.targetDescription
            )
            // The client as the logs name it: a PROXY header's source when one was received.
            if let capture = self.observers.capture,
                let client = self.announcedClient?.source ?? self.clientHandler.context?.channel.remoteAddress,
                let server = self.serverChannel?.remoteAddress
            {
                self.conversation = capture.conversation(client: client, server: server)
                self.isPlainPath = false
            }
            // Bytes written now carry the ACK that ends the server's handshake, if the connect held it back.
            let writesNow = self.configuration.sendProxyHeader != nil || (self.isPlainPath && !self.earlyData.isEmpty)
            if let version = self.configuration.sendProxyHeader {
                self.sendProxyHeader(version)
            }
            while let buffer = self.earlyData.popFirst() {
                if self.isPlainPath {
                    self.serverHandler.forward(buffer)
                } else {
                    self.shape(buffer, from: .client, countingRate: false)
                }
            }
            self.earlyDataBytes = 0
            self.serverHandler.flushIfNeeded()
            // Nothing to send (a server that speaks first, or bytes that shaping delays): the held ACK goes
            // now, not when the delayed-ACK timer fires.
            if !writesNow, self.connector.holdsHandshakeACK {
                LinuxSocketOptions.sendHeldACK(self.serverChannel)
            }
            if thenShutdownServerOutput {
                self.perform(.shutdownOutput(.server))
            }
            self.clientHandler.resumeReadingIfPaused()
            self.serverHandler.resumeReadingIfPaused()
            self.startTimer()
            self.startSplicing()

        case .shutdownOutput(let side):
            // With --latency, EOF follows the delayed chunks of its direction.
            self.conversation?.recordEnd(side.partner.readDirection)
            if self.shaping?.deferShutdown(side.partner.readDirection) == true { break }
            self.handler(side).shutdownOutput()

        case .closeChannel(let side):
            self.handler(side).context?.close(promise: nil)

        case .close(let reason):
            self.cancelTimers()
            // Asked before anything held is dropped, and before either socket closes.
            let resets = (client: self.resetsOnClose(.client, reason), server: self.resetsOnClose(.server, reason))
            self.earlyData.removeAll()
            self.shaping?.removeAll()
            switch reason {
            case .clientReset: self.conversation?.recordReset(.upstream)
            case .serverReset, .stallTimeout: self.conversation?.recordReset(.downstream)
            case _ where reason.resetsCutStreams:
                // What each peer is about to see: a FIN (a stream ended) first, then any reset.
                if !resets.client { self.conversation?.recordEnd(.downstream) }
                if !resets.server { self.conversation?.recordEnd(.upstream) }
                if resets.client { self.conversation?.recordReset(.downstream) }
                if resets.server { self.conversation?.recordReset(.upstream) }
            default: break
            }
            // While connecting, the attempts are closed: that abandons the connect at once instead of holding
            // a descriptor until the connect completes or times out.
            self.connectAttempts?.cancel()
            // What the client sent for a server that never answered is dropped (counted), so it sees a FIN.
            if reason.dropsClientInput, let client = self.clientHandler.context?.channel {
                self.bytesUpstream &+= UInt64(LinuxSocketOptions.discardInput(client))
            }
            for side in [Side.client, .server] {
                guard let channel = self.channel(side) else { continue }
                if side == .client ? resets.client : resets.server { LinuxSocketOptions.setResetOnClose(channel) }
                channel.close(promise: nil)
            }

        case .report(let reason):
            self.reportEnd(reason)
        }
    }

    /// Whether `side`'s socket closes with a reset: always for an abortive reason, and at an idle or drain
    /// timeout when bytes to or from it are pending (held by NIO, `--latency` or the early-data buffer, or
    /// unread in a socket; ``LinuxSocketOptions/closingCutsStream(peer:partner:heldFor:heldFrom:)``).
    private func resetsOnClose(_ side: Side, _ reason: CloseReason) -> Bool {
        if reason.isAbortive { return true }
        guard reason.resetsCutStreams, let peer = self.channel(side).flatMap(ChannelDescriptor.descriptor(of:)) else {
            return false
        }
        let partner = self.channel(side.partner).flatMap(ChannelDescriptor.descriptor(of:)) ?? -1
        return LinuxSocketOptions.closingCutsStream(
            peer: peer,
            partner: partner,
            heldFor: self.heldBytes(toward: side),
            heldFrom: self.heldBytes(toward: side.partner)
        )
    }

    /// Bytes the proxy holds for `side` (1 standing for "some" in NIO's write buffer, which is all that is asked).
    private func heldBytes(toward side: Side) -> Int {
        // No channel yet (a server still connecting): NIO holds nothing for it.
        let inNIO = self.channel(side) == nil || self.handler(side).holdsNothing ? 0 : 1
        return inNIO + (self.shaping?.delayedBytes(side.partner.readDirection) ?? 0)
            + (side == .server ? self.earlyDataBytes : 0)
    }

    private func channel(_ side: Side) -> Channel? {
        side == .client ? self.clientHandler.context?.channel : self.serverChannel
    }

    /// Both sockets are closed (by NIO, or by the splice engine): log the end, report it, and let go.
    func reportEnd(_ reason: CloseReason) {
        self.cancelTimers()
        // The slot first: a client that connects once it has seen `bridge closed` must find it free.
        self.hooks.finished(reason)
        let duration = self.eventLoop.now - self.startTime
        self.logger.logBridgeClosed(
            id: self.id, reason: reason, upstream: self.bytesUpstream, downstream: self.bytesDownstream, duration: duration
        )
        self.reportBytes()
        self.observers.metrics?.bridgeClosed(reason, duration: duration)
        self.clientHandler.bridge = nil
        self.serverHandler.bridge = nil
    }
}

@available(*, unavailable)
extension Bridge: Sendable {}
