import Logging
import NIOCore
import NIOPosix

/// One stream of a tunnel at one end: its local socket, its state machine and windows, and the glue to the
/// ``MuxSession`` that carries its frames.
///
/// Everything runs on the tunnel's event loop (the local socket is made or accepted on it), so no locks.
/// Bytes read from the local socket become DATA frames while the stream has credit and the tunnel is
/// writable; otherwise reading pauses. Bytes from DATA frames are written to the local socket, and their
/// credit goes back to the peer only once they are written out.
final class MuxStream {
    typealias Machine = MuxStreamStateMachine

    /// The `bridge.id` in logs.
    let bridgeID: UInt64
    /// The stream id on the tunnel, once opened.
    private(set) var streamID: UInt32 = 0
    let role: Machine.Role
    let environment: MuxStreamEnvironment
    let eventLoop: EventLoop
    private(set) var logger: Logger
    private var configuration: BridgeConfiguration { self.environment.configuration.bridge }

    private var machine: Machine
    private var window: MuxWindow
    let handler = MuxStreamHandler()
    private(set) var localChannel: Channel?
    private(set) var session: MuxSession?
    /// Called once when the stream has ended (the mux's tunnel connection forgets a waiting stream).
    var finished: ((MuxStream) -> Void)?

    /// Read from the local socket, not yet sent (no credit, or the tunnel not up): at most the high-water
    /// mark while waiting for the tunnel, else one read.
    private var pendingOut = CircularBuffer<ByteBuffer>(initialCapacity: 1)
    private var pendingOutBytes = 0
    /// An EOF frame goes after the pending bytes.
    private var eofQueued = false
    private var eofSent = false
    /// Demux: the server connections being tried, closed if the stream ends first.
    private var connectAttempts: ConnectAttempts?
    /// Demux: DATA that arrived before the server was connected (bounded by the window).
    private var pendingIn = CircularBuffer<ByteBuffer>(initialCapacity: 1)
    /// Bytes written to the local socket since its last flush.
    private var unflushed = 0
    /// A write to the local socket failed (it closed or reset with bytes still to write).
    private var localWriteFailed = false
    /// Bytes flushed to the local socket that it has not taken yet (``MuxSession/shouldCopy(pieceOf:readCapacity:localBacklog:)``).
    private(set) var unwrittenLocal = 0
    private var connectedLogged = false

    private(set) var bytesFromLocal: UInt64 = 0
    private(set) var bytesFromTunnel: UInt64 = 0
    private var bytesSent: UInt64 = 0
    private var byteReporter = ByteCountReporter()
    private let startTime: NIODeadline
    private var timeouts: BridgeTimeouts
    private var timer: Scheduled<Void>?
    private var waitTimer: Scheduled<Void>?
    private var drainTimer: Scheduled<Void>?

    /// - Parameters:
    ///   - role: which end of the tunnel.
    ///   - environment: settings, logger and bookkeeping.
    ///   - eventLoop: the tunnel's event loop.
    init(role: Machine.Role, environment: MuxStreamEnvironment, eventLoop: EventLoop) {
        self.role = role
        self.environment = environment
        self.eventLoop = eventLoop
        self.bridgeID = BridgeID.next()
        self.machine = Machine(role: role)
        self.window = MuxWindow(receiveWindow: environment.configuration.receiveWindow)
        var logger = environment.logger
        logger[metadataKey: "bridge.id"] = .stringConvertible(self.bridgeID)
        self.logger = logger
        let now = eventLoop.now
        self.startTime = now
        self.timeouts = BridgeTimeouts(
            stallTimeout: environment.configuration.bridge.stallTimeout,
            idleTimeout: environment.configuration.bridge.idleTimeout,
            reportInterval: environment.metrics == nil ? nil : BridgeTimeouts.metricsReportInterval,
            now: now
        )
        self.handler.stream = self
        environment.streamStarted()
    }

    /// Bytes from client to server, and back (the names of SPEC §4).
    private var bytesUpstream: UInt64 { self.role == .mux ? self.bytesFromLocal : self.bytesFromTunnel }
    private var bytesDownstream: UInt64 { self.role == .mux ? self.bytesFromTunnel : self.bytesFromLocal }

    // MARK: Mux: a client that waits for the tunnel, then is opened on it

    /// Mux: the client is accepted; it waits for a tunnel for at most the connect timeout.
    func waitForTunnel() {
        guard self.waitTimer == nil, self.machine.isConnecting else { return }
        self.waitTimer = self.eventLoop.assumeIsolated().scheduleTask(in: self.configuration.connectTimeout) {
            self.waitTimer = nil
            guard self.machine.isConnecting else { return }
            self.logger.info("bridge connect failed", metadata: ["error": "no tunnel within the connect timeout"])
            self.perform(self.machine.abort(.connectTimeout))
        }
    }

    /// Mux: the stream gets `streamID` on `session`; send OPEN and what the client sent so far.
    func open(on session: MuxSession, streamID: UInt32) {
        self.waitTimer?.cancel()
        self.waitTimer = nil
        self.session = session
        self.streamID = streamID
        self.logger[metadataKey: "stream.id"] = .stringConvertible(streamID)
        session.send(MuxFrame(streamID: streamID, payload: .open(target: self.environment.configuration.openTarget)))
        self.announceWindow(on: session)
        self.perform(self.machine.opened())
    }

    /// Tells the peer how far past the initial credit it may send on this stream: our `--window`.
    private func announceWindow(on session: MuxSession) {
        guard let increment = self.window.announcement else { return }
        session.send(MuxFrame(streamID: self.streamID, payload: .windowUpdate(increment)))
    }

    /// Whether the client is still waiting for a tunnel and not ending.
    var isWaiting: Bool { self.session == nil && self.machine.isConnecting }

    // MARK: Demux: a stream opened by the peer, connecting to the server

    /// Demux: OPEN arrived; connect to `target` with `connector`.
    func connect(on session: MuxSession, streamID: UInt32, connector: any ServerConnector) {
        self.session = session
        self.streamID = streamID
        self.logger[metadataKey: "stream.id"] = .stringConvertible(streamID)
        self.announceWindow(on: session)
        self.logger.info(
            "bridge accepted",
            metadata: ["client.address": "\(session.channel.remoteAddress.logDescription)"]
        )
        let handler = NIOLoopBound(self.handler, eventLoop: self.eventLoop)
        let configuration = self.configuration
        let attempts = ConnectAttempts(eventLoop: self.eventLoop)
        self.connectAttempts = attempts
        connector.connect(on: self.eventLoop, configuration: configuration, attempts: attempts) { channel in
            try MuxStreamChannelOptions.apply(configuration, to: channel)
            try channel.pipeline.syncOperations.addHandler(handler.value)
        }.assumeIsolated().whenComplete { result in
            attempts.finished()
            self.connectAttempts = nil
            switch result {
            case .success(let channel):
                self.localChannel = channel
                self.watchClose(of: channel)
                if self.machine.isConnecting {
                    self.logger.info(
                        "bridge connected",
                        metadata: ["server.address": "\(channel.remoteAddress.logDescription)"]
                    )
                    self.connectedLogged = true
                }
                self.perform(self.machine.opened())
            case .failure(let error):
                // A stream reset while connecting gave up the connect itself: that is no failure to report.
                if !attempts.isCancelled {
                    self.logger.info(
                        "bridge connect failed",
                        metadata: ["server.address": "\(connector.targetDescription)", "error": "\(error)"]
                    )
                }
                self.perform(self.machine.connectFailed(timedOut: isConnectTimeout(error)))
                self.perform(self.machine.localClosed(holdingBytes: false))
            }
        }
    }

    // MARK: Events from the local socket

    /// Mux: the client was accepted (called in its channel initializer, before it is active).
    func accepted(_ channel: Channel) {
        self.localChannel = channel
        self.watchClose(of: channel)
        self.logger.info("bridge accepted", metadata: ["client.address": "\(channel.remoteAddress.logDescription)"])
    }

    private func watchClose(of channel: Channel) {
        channel.closeFuture.assumeIsolated().whenComplete { _ in
            // Bytes for the local peer that never reached its socket (its reset failed them) cut the stream, even
            // after both EOFs: as on a bridge, a write that fails while bytes are held is a reset, not completed.
            if self.localWriteFailed { self.perform(self.machine.localError()) }
            self.perform(self.machine.localClosed(holdingBytes: self.pendingOutBytes > 0))
        }
    }

    /// Whether the local socket may be read now.
    func mayReadLocal() -> Bool {
        guard self.machine.localInputOpen else { return false }
        if let session = self.session, self.machine.isOpen {
            return session.isWritable && self.pendingOutBytes == 0 && self.window.sendCredit > 0
        }
        // Waiting for the tunnel: keep what the client sends, up to the high-water mark.
        return self.role == .mux && self.machine.isConnecting && self.pendingOutBytes < self.configuration.highWaterMark
    }

    func localRead(_ buffer: ByteBuffer) {
        guard !self.machine.isClosing else { return }
        self.bytesFromLocal &+= UInt64(buffer.readableBytes)
        if self.configuration.logData { self.logger.logData(buffer, direction: self.role == .mux ? .upstream : .downstream) }
        if self.machine.isOpen, self.pendingOutBytes == 0, buffer.readableBytes <= self.window.sendCredit,
            let session = self.session
        {
            self.sendData(buffer, on: session)
        } else {
            self.pendingOut.append(buffer)
            self.pendingOutBytes += buffer.readableBytes
            if self.machine.isOpen { self.pumpOut() }
        }
        if self.timer == nil { self.startTimer() }
    }

    func localReadComplete() {
        // Once per tick for the whole tunnel, not once per client: see ``MuxSession/scheduleFlush()``.
        self.session?.scheduleFlush()
    }

    func localInputClosed() {
        self.perform(self.machine.localInputClosed())
    }

    func localOutputClosed() {
        self.perform(self.machine.localOutputClosed())
    }

    func localError(_ error: Error) {
        self.logger.debug("bridge error", metadata: ["error": "\(error)"])
        self.perform(self.machine.localError())
    }

    /// The listener is draining: give the stream until the drain timeout to end on its own.
    func quiesceRequested() {
        guard let drainTimeout = self.configuration.drainTimeout, self.drainTimer == nil else { return }
        self.drainTimer = self.eventLoop.assumeIsolated().scheduleTask(in: drainTimeout) {
            self.drainTimer = nil
            self.perform(self.machine.abort(.drainTimeout))
        }
    }

    // MARK: Events from the tunnel

    /// The header of a DATA frame of `length` bytes arrived; its payload follows in ``received(_:)`` calls.
    /// - Throws: ``MuxProtocolError`` if the peer sends more than its credit.
    func dataFrameStarted(length: Int) throws {
        // Bytes after the sender's own EOF would reach the local socket after its SHUT_WR, or be dropped.
        guard !self.machine.hasRemoteEOF else { throw MuxProtocolError.streamViolation("DATA after EOF") }
        try self.window.received(length)
    }

    /// Payload bytes of a DATA frame arrived (all or part of one frame).
    func received(_ buffer: ByteBuffer) {
        self.bytesFromTunnel &+= UInt64(buffer.readableBytes)
        if self.configuration.logData { self.logger.logData(buffer, direction: self.role == .mux ? .downstream : .upstream) }
        if self.machine.isOpen, self.localChannel != nil {
            self.handler.write(buffer)
            if self.unflushed == 0 { self.session?.needsLocalFlush(self) }
            self.unflushed += buffer.readableBytes
            if self.timer == nil { self.startTimer() }
        } else if self.machine.isConnecting {
            self.pendingIn.append(buffer)
        }
    }

    /// Flushes what DATA frames brought since the last flush; grants the credit back once it is written out.
    func flushLocal() {
        let count = self.unflushed
        guard count > 0 else { return }
        self.unflushed = 0
        self.unwrittenLocal += count
        self.handler.flush { [self] written in
            self.unwrittenLocal -= count
            if !written { self.localWriteFailed = true }
            guard written, !self.machine.isClosing, let session = self.session,
                let increment = self.window.delivered(count)
            else { return }
            session.send(MuxFrame(streamID: self.streamID, payload: .windowUpdate(increment)))
            session.scheduleFlush()
        }
    }

    func remoteEOF() {
        self.perform(self.machine.remoteInputClosed())
    }

    func remoteReset(_ code: MuxErrorCode) {
        self.logger.debug("bridge reset by peer", metadata: ["code": "\(code)"])
        self.perform(self.machine.remoteReset(code))
    }

    /// Mux: the demux connected the server.
    func openAcknowledged() {
        guard !self.connectedLogged, !self.machine.isClosing else { return }
        self.connectedLogged = true
        self.logger.info("bridge connected", metadata: ["server.address": "\(self.session?.peerDescription ?? "tunnel")"])
    }

    /// WINDOW_UPDATE arrived.
    /// - Throws: ``MuxProtocolError`` if it grows the window past 2^31 - 1.
    func windowUpdate(_ increment: UInt32) throws {
        try self.window.granted(increment)
        if self.machine.isFinishing {
            self.pumpOut()
            return
        }
        if self.machine.isOpen { self.pumpOut() }
        self.handler.resumeReadingIfPaused()
    }

    /// The tunnel became writable again.
    func tunnelWritable() {
        self.handler.resumeReadingIfPaused()
    }

    func tunnelClosed() {
        // Everything crossed both ways (the far end's EOF arrived, ours went out with all before it): the stream
        // needs the tunnel no more, only to hand what it holds to its local socket. The far end may have shut
        // down gracefully with its side complete; cutting this one would lose bytes already here.
        // (Our EOF goes out only once nothing is pending, and nothing is read after it. A finishing stream has
        // not sent it: its held bytes are lost.)
        if self.machine.hasRemoteEOF && self.eofSent { return }
        self.perform(self.machine.tunnelClosed())
    }

    // MARK: Sending

    private func sendData(_ buffer: ByteBuffer, on session: MuxSession) {
        self.window.sent(buffer.readableBytes)
        self.bytesSent &+= UInt64(buffer.readableBytes)
        session.sendData(streamID: self.streamID, buffer)
    }

    /// Sends pending bytes as far as credit allows, then a queued EOF once nothing is pending.
    private func pumpOut() {
        guard let session = self.session else { return }
        while var first = self.pendingOut.first, self.window.sendCredit > 0 {
            let count = min(first.readableBytes, self.window.sendCredit)
            let slice = first.readSlice(length: count)!
            if first.readableBytes == 0 {
                self.pendingOut.removeFirst()
            } else {
                self.pendingOut[self.pendingOut.startIndex] = first
            }
            self.pendingOutBytes -= count
            self.sendData(slice, on: session)
        }
        if self.pendingOutBytes == 0, self.eofQueued, !self.eofSent {
            self.eofSent = true
            session.send(MuxFrame(streamID: self.streamID, payload: .eof))
            if self.machine.isFinishing {
                session.flushIfNeeded()
                self.perform(self.machine.sentLastBytes())
            }
        }
    }

    // MARK: Carrying out actions

    private func perform(_ action: Machine.Action) {
        switch action {
        case .none:
            break

        case .startStream(let sendEOF, let shutdownLocalOutput):
            guard let session = self.session else { return }
            if self.role == .demux {
                session.send(MuxFrame(streamID: self.streamID, payload: .openAcknowledged))
                while let buffer = self.pendingIn.popFirst() {
                    self.handler.write(buffer)
                    self.unflushed += buffer.readableBytes
                }
                self.flushLocal()
            }
            if sendEOF { self.eofQueued = true }
            self.pumpOut()
            session.flushIfNeeded()
            if shutdownLocalOutput { self.handler.shutdownOutput() }
            self.handler.resumeReadingIfPaused()
            self.startTimer()

        case .sendEOF:
            self.eofQueued = true
            self.pumpOut()
            self.session?.flushIfNeeded()

        case .shutdownLocalOutput:
            self.flushLocal()
            self.handler.shutdownOutput()

        case .closeLocal:
            self.localChannel?.close(promise: nil)

        case .reset(let code, let reason):
            if let session = self.session, !self.machine.isConnecting || self.role == .demux {
                session.send(MuxFrame(streamID: self.streamID, payload: .reset(code)))
                session.flushIfNeeded()
            }
            self.closeLocal(reason)

        case .abortLocal(let reason):
            self.closeLocal(reason)

        case .report(let reason, let lastFrame):
            self.finish(reason, lastFrame: lastFrame)

        case .finishSending:
            // What the local peer sent before its EOF still waits for credit: send it, then EOF, then end.
            // A drain already under way keeps its timer: it ends the stream too.
            self.cancelTimers(keepingDrain: true)
            self.eofQueued = true
            if self.session?.isClosed ?? true { self.perform(self.machine.tunnelClosed()) }
        }
    }

    /// Ends the stream: sends its last frame, logs, and reports.
    private func finish(_ reason: CloseReason, lastFrame: Machine.LastFrame) {
        self.cancelTimers()
        if let session = self.session {
            switch lastFrame {
            case .none: break
            case .eof: session.send(MuxFrame(streamID: self.streamID, payload: .eof))
            case .reset(let code): session.send(MuxFrame(streamID: self.streamID, payload: .reset(code)))
            }
            session.flushIfNeeded()
        }
        let duration = self.eventLoop.now - self.startTime
        self.logger.info(
            "bridge closed",
            metadata: [
                "close.reason": "\(reason)",
                "bytes.upstream": .stringConvertible(self.bytesUpstream), "bytes.downstream": .stringConvertible(self.bytesDownstream),
                "duration": .stringConvertible(Double(duration.nanoseconds) / 1e9),
            ]
        )
        self.reportBytes()
        self.environment.metrics?.bridgeClosed(reason, duration: duration)
        self.environment.streams.release()
        self.session?.removeStream(self)
        self.finished?(self)
        self.finished = nil
        self.handler.stream = nil
    }

    private func closeLocal(_ reason: CloseReason) {
        self.cancelTimers()
        self.pendingOut.removeAll()
        self.pendingOutBytes = 0
        self.pendingIn.removeAll()
        guard let channel = self.localChannel else {
            // Demux, still connecting: the attempts are closed rather than left to finish or time out, so the
            // stream ends (and frees its slot and descriptor) now.
            self.connectAttempts?.cancel()
            return
        }
        // An idle or drain timeout that cuts the stream into the local socket short resets it, as a bridge does.
        let cut = reason.resetsCutStreams
            && ChannelDescriptor.descriptor(of: channel).map {
                LinuxSocketOptions.closingCutsStream(
                    peer: $0, partner: -1, heldFor: self.unwrittenLocal + self.unflushed, heldFrom: self.pendingOutBytes
                )
            } == true
        if reason.isAbortive || cut { LinuxSocketOptions.setResetOnClose(channel) }
        // A stream the far end refused or could not connect: the client's unread bytes are dropped (and
        // counted), so it sees a FIN rather than the reset close(2) sends over them.
        if reason.dropsClientInput { self.bytesFromLocal &+= UInt64(LinuxSocketOptions.discardInput(channel)) }
        channel.close(promise: nil)
    }

    // MARK: Timeouts

    private func startTimer() {
        guard self.timer == nil, self.timeouts.isEnabled, self.machine.isOpen else { return }
        self.timeouts.restart(now: self.eventLoop.now)
        self.scheduleTick(in: self.timeouts.samplingInterval)
    }

    private func scheduleTick(in delay: TimeAmount) {
        self.timer = self.eventLoop.assumeIsolated().scheduleTask(in: delay) {
            self.tick()
        }
    }

    private func tick() {
        self.timer = nil
        guard self.machine.isOpen else { return }
        // Towards the local socket, progress is bytes its peer acknowledged. Towards the tunnel nothing is
        // judged here: bytes wait for credit because the far end's local peer reads slowly, and the far end
        // times that out at its socket, where progress shows (SPEC §2 rule 7), and sends RESET stallTimeout.
        // Credit only comes back as the far end's writes complete, which a large send buffer delays by
        // megabytes: judged here, a reader that keeps reading was cut off. Bytes sent still count as traffic.
        let outbound = BridgeTimeouts.Sample(held: 0, delivered: self.bytesSent)
        let decision = self.timeouts.tick(
            now: self.eventLoop.now,
            trafficBytes: self.bytesFromLocal &+ self.bytesFromTunnel,
            upstream: outbound,
            downstream: self.handler.sample()
        )
        self.reportBytes()
        switch decision {
        case .sampleAgain(let delay):
            self.scheduleTick(in: delay)
        case .stop:
            break
        case .expire(let reason):
            self.logger.debug("bridge timed out", metadata: ["close.reason": "\(reason)"])
            self.perform(self.machine.abort(reason))
        }
    }

    private func reportBytes() {
        self.byteReporter.report(
            upstream: self.bytesUpstream,
            downstream: self.bytesDownstream,
            to: self.environment.metrics
        )
    }

    private func cancelTimers(keepingDrain: Bool = false) {
        self.timer?.cancel()
        self.timer = nil
        self.waitTimer?.cancel()
        self.waitTimer = nil
        guard !keepingDrain else { return }
        self.drainTimer?.cancel()
        self.drainTimer = nil
    }
}

@available(*, unavailable)
extension MuxStream: Sendable {}
