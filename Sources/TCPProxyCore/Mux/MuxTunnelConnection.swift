import Logging
import NIOCore
import NIOPosix

/// Mux: one tunnel connection to the demux, kept up: it connects, reconnects with capped exponential
/// backoff and jitter when the tunnel drops (its streams are reset by the session), and holds clients that
/// arrive while it is down until it is up again or their connect timeout ends.
///
/// The tunnel is up when the demux has answered, not when TCP has connected: until its first frame (the
/// answer to the PING the session sends at once) clients wait, and a connection that closes or stays
/// silent for `--connect-timeout` is a failed connect, retried with backoff.
///
/// A tunnel that stops taking streams (the demux's GOAWAY as it drains or reloads, or its stream ids used up)
/// keeps its streams to their end, and a new tunnel is connected at once for the clients that come meanwhile.
///
/// All state is touched only on ``eventLoop``; the service calls in through `execute`.
final class MuxTunnelConnection: @unchecked Sendable {
    let index: Int
    let eventLoop: EventLoop
    private let environment: MuxStreamEnvironment
    private let tunnel: Endpoint
    private var logger: Logger
    private var session: MuxSession?
    /// The session's demux has answered: streams may be opened on it.
    private var isUp = false
    /// Bounds the wait for the demux's first answer.
    private var answerTimer: Scheduled<Void>?
    /// When the current tunnel came up.
    private var upSince = NIODeadline.distantPast
    /// Tunnels that take no new streams but still carry some, until they close.
    private var draining: [MuxSession] = []
    private var waiting: [MuxStream] = []
    private var backoff: MuxBackoff
    private var retry: Scheduled<Void>?
    private var connecting = false
    private var stopped = false
    private var failuresLogged = 0

    /// The tunnel's own write buffer: reading local sockets pauses above `high` (SPEC §2 rule 4 for the tunnel).
    static let writeBufferWaterMark = ChannelOptions.Types.WriteBufferWaterMark(low: 256 * 1024, high: 1024 * 1024)

    /// Reads on the tunnel (both ends) of up to 256 KiB, four times NIO's default: the tunnel carries every
    /// stream's bytes, and bigger reads mean fewer read calls and, at the demux, bigger writes to the servers
    /// (measured: a quarter of the reads and half the writes per GB; docs/BENCHMARKS.md). DATA payload is
    /// sliced out of the read, so the read buffer lives until its slices are written out.
    static let receiveAllocator = AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 64 * 1024, maximum: 256 * 1024)
    /// One read per wakeup: a stream that stalls keeps at most one read buffer alive with its slices
    /// (``MuxSession/shouldCopy(pieceOf:readCapacity:localBacklog:)``).
    static let readsPerWakeup: UInt = 1
    /// A tunnel up this long drains into an immediate reconnect; one that goes away sooner, into a backoff.
    static let settledAfter = TimeAmount.seconds(1)

    init(index: Int, eventLoop: EventLoop, tunnel: Endpoint, environment: MuxStreamEnvironment) {
        self.index = index
        self.eventLoop = eventLoop
        self.tunnel = tunnel
        self.environment = environment
        self.backoff = MuxBackoff(
            initial: environment.configuration.reconnectInitial,
            maximum: environment.configuration.reconnectMaximum
        )
        var logger = environment.logger
        logger[metadataKey: "tunnel"] = "\(index)"
        self.logger = logger
    }

    /// Streams here, open or waiting (for spreading clients over tunnels).
    var load: Int { (self.session?.streamCount ?? 0) + self.waiting.count }

    /// Starts connecting.
    func start() {
        self.eventLoop.execute { self.connect() }
    }

    /// Stops reconnecting and closes the tunnel with GOAWAY.
    /// - Returns: a future that succeeds once the tunnel's socket is closed.
    func stop() -> EventLoopFuture<Void> {
        self.eventLoop.submit {
            self.stopped = true
            self.retry?.cancel()
            self.retry = nil
            self.answerTimer?.cancel()
            self.answerTimer = nil
            let sessions = self.draining + (self.session.map { [$0] } ?? [])
            for session in sessions { session.close(goAway: .noError) }
            return EventLoopFuture.andAllComplete(sessions.map { $0.channel.closeFuture }, on: self.eventLoop)
        }.flatMap { $0 }
    }

    /// The mux drains: every stream on the tunnel gets the drain timeout, also those whose client socket is
    /// gone (the listener's quiescing reaches only open client sockets) but whose last bytes wait for credit.
    func quiesceStreams() {
        self.eventLoop.execute {
            self.session?.quiesceStreams()
            for session in self.draining { session.quiesceStreams() }
        }
    }

    /// A new client: open it on the tunnel, or let it wait for one.
    func attach(_ stream: MuxStream) {
        if let session = self.session, self.isUp, session.canOpenStream {
            session.openStream(stream)
            return
        }
        self.waiting.removeAll { !$0.isWaiting }
        self.waiting.append(stream)
        stream.waitForTunnel()
        if self.session == nil && !self.connecting && self.retry == nil && !self.stopped {
            self.connect()
        }
    }

    private func connect() {
        guard !self.stopped, !self.connecting, self.session == nil else { return }
        self.connecting = true
        let environment = self.environment
        ClientBootstrap(group: self.eventLoop)
            .connectTimeout(environment.configuration.bridge.connectTimeout)
            .channelOption(.writeBufferWaterMark, value: Self.writeBufferWaterMark)
            .channelOption(.recvAllocator, value: Self.receiveAllocator)
            .channelOption(.maxMessagesPerRead, value: Self.readsPerWakeup)
            // Small control frames (WINDOW_UPDATE, PONG) must not wait for Nagle behind delayed ACKs.
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let session = MuxSession(role: .mux, channel: channel, environment: environment)
                    try channel.pipeline.syncOperations.addHandler(MuxTunnelHandler(session: session))
                }
            }
            .connect(host: self.tunnel.host, port: self.tunnel.port)
            .assumeIsolated()
            .whenComplete { result in
                self.connecting = false
                switch result {
                case .success(let channel):
                    self.connected(channel)
                case .failure(let error):
                    self.connectFailed(SystemErrorText.describe(error))
                    self.scheduleRetry()
                }
            }
    }

    /// Counts and logs a connect that failed: once per outage at warning level, then quietly at debug.
    private func connectFailed(_ error: String) {
        self.environment.metrics?.tunnelConnectFailed()
        let level: Logger.Level = self.failuresLogged == 0 ? .warning : .debug
        self.failuresLogged += 1
        self.logger.log(level: level, "tunnel connect failed", metadata: ["tunnel.address": "\(self.tunnel)", "error": "\(error)"])
    }

    private func connected(_ channel: Channel) {
        guard let session = try? channel.pipeline.syncOperations.handler(type: MuxTunnelHandler.self).session,
            !session.isClosed
        else {
            channel.close(promise: nil)
            self.scheduleRetry()
            return
        }
        if self.stopped {
            session.close(goAway: .noError)
            return
        }
        self.session = session
        self.isUp = false
        session.closed = { [self] reason in self.sessionClosed(session, reason: reason) }
        session.peerAnswered = { [self] in self.answered(session) }
        let timeout = self.environment.configuration.bridge.connectTimeout
        self.answerTimer = self.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
            self.answerTimer = nil
            guard self.session === session, !self.isUp else { return }
            self.connectFailed("no answer from the demux within \(timeout)")
            session.close(goAway: .pingTimeout)
        }
    }

    /// The demux answered: the tunnel is up, and waiting clients are opened on it.
    private func answered(_ session: MuxSession) {
        guard self.session === session else { return }
        self.answerTimer?.cancel()
        self.answerTimer = nil
        self.isUp = true
        self.upSince = self.eventLoop.now
        self.failuresLogged = 0
        self.logger.info(
            "tunnel up",
            metadata: ["tunnel.address": "\(session.channel.remoteAddress.logDescription)", "waiting": "\(self.waiting.count)"]
        )
        session.streamRemoved = { [self] in
            if !self.waiting.isEmpty { self.openWaiting() }
        }
        session.stoppedOpening = { [self] in self.stoppedOpening(session) }
        self.openWaiting()
    }

    /// The tunnel takes no new streams: its streams finish there, and a new tunnel is connected now.
    private func stoppedOpening(_ session: MuxSession) {
        guard self.session === session else { return }
        self.session = nil
        self.isUp = false
        session.streamRemoved = nil
        self.draining.append(session)
        self.logger.info("tunnel draining", metadata: ["tunnel.address": "\(self.tunnel)", "streams": "\(session.streamCount)"])
        // At once, unless the tunnel had only just come up: a peer that answers and goes away again each
        // time gets the reconnect backoff, not a loop as fast as its round trip.
        if self.settled() {
            self.connect()
        } else {
            self.scheduleRetry()
        }
    }

    /// Whether the tunnel that is ending had been up for ``settledAfter``: then the backoff starts over.
    private func settled() -> Bool {
        guard self.eventLoop.now - self.upSince >= Self.settledAfter else { return false }
        self.backoff.reset()
        return true
    }

    /// Opens waiting clients while the tunnel has room for them.
    private func openWaiting() {
        guard let session = self.session, self.isUp else { return }
        let waiting = self.waiting
        self.waiting = []
        for stream in waiting where stream.isWaiting {
            if session.canOpenStream {
                session.openStream(stream)
            } else {
                self.waiting.append(stream)
            }
        }
        session.flushIfNeeded()
    }

    private func sessionClosed(_ session: MuxSession, reason: MuxTunnelCloseReason) {
        if let index = self.draining.firstIndex(where: { $0 === session }) {
            self.draining.remove(at: index)
            self.logger.info("tunnel down", metadata: ["tunnel.address": "\(self.tunnel)", "reason": "\(reason)"])
            return
        }
        guard self.session === session else { return }
        self.session = nil
        if self.isUp {
            self.isUp = false
            _ = self.settled()
            self.logger.info("tunnel down", metadata: ["tunnel.address": "\(self.tunnel)", "reason": "\(reason)"])
        } else if let timer = self.answerTimer {
            // Closed before the demux answered (the timeout has already said so itself).
            timer.cancel()
            self.answerTimer = nil
            if !self.stopped { self.connectFailed("closed before the demux answered (\(reason))") }
        }
        if !self.stopped { self.scheduleRetry() }
    }

    private func scheduleRetry() {
        guard !self.stopped, self.retry == nil else { return }
        let delay = self.backoff.nextDelay(random: Double.random(in: 0..<1))
        self.logger.debug("tunnel reconnect scheduled", metadata: ["delay": "\(delay)"])
        self.retry = self.eventLoop.assumeIsolated().scheduleTask(in: delay) {
            self.retry = nil
            self.connect()
        }
    }
}
