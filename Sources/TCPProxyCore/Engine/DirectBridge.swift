import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// How a bridge handed over by NIO ended, for the ``Bridge`` that handed it over.
struct DirectBridgeEnd: Sendable {
    var reason: CloseReason
    /// Bytes read from the client over the bridge's whole life (NIO part included).
    var bytesUpstream: UInt64
    /// Bytes read from the server over the bridge's whole life.
    var bytesDownstream: UInt64
    /// What of those bytes the metrics have been given (all of them, by now).
    var reporter: ByteCountReporter
}

/// What a ``Bridge`` hands to the splice engine: its sockets, its pipes and the state it had on NIO.
struct DirectHandover {
    var id: UInt64
    var client: CInt
    var server: CInt
    var upstreamPipe: SplicePipe
    var downstreamPipe: SplicePipe
    var state: DirectLinkState
    var timeouts: BridgeTimeouts
    var bytesUpstream: UInt64
    var bytesDownstream: UInt64
    var reporter: ByteCountReporter
    var metrics: ProxyMetrics?
    var drain: DrainSignal?
    /// Called once, on the engine thread, when the bridge has ended and every descriptor is closed.
    var onEnd: @Sendable (DirectBridgeEnd) -> Void
}

/// A bridge the direct engine owns: two sockets, the flows between them (through pipes with splice(2), or
/// through user-space memory with read(2)/write(2)), and the bridge's timeouts.
///
/// It either came from a NIO ``Bridge`` that carried bulk (a ``DirectHandover``: sockets duplicated from
/// NIO's, pipes made) or was accepted by the engine itself (``DirectAcceptor``: it starts connecting,
/// then copies, and moves to pipes when it carries bulk). From then on only the engine's thread touches
/// it, so it needs no locks; the data path allocates nothing and logs nothing.
final class DirectBridge {
    typealias Side = BridgeStateMachine.Side

    /// Whether the server connection is up yet (only accepted bridges connect).
    enum Phase {
        case connecting
        case forwarding
    }

    /// Where the bytes wait between the sockets.
    enum Transport {
        /// User space: read(2) into the engine's scratch buffer, write(2) on at once.
        case copy(upstream: CopyBuffer, downstream: CopyBuffer)
        /// The kernel: splice(2) through a pipe per direction.
        case splice(upstream: SplicePipe, downstream: SplicePipe)
    }

    /// Who is told when the bridge ends.
    enum Origin {
        case handover(@Sendable (DirectBridgeEnd) -> Void)
        case accepted(DirectAcceptor)
    }

    let id: UInt64
    /// Where an accepted bridge's server connection goes, for its log lines (`nil` for a handover).
    let serverAddress: SocketAddress?
    /// The PROXY header to write to the server before anything else (`--proxy-protocol`), until it is written.
    var proxyHeader: [UInt8]?
    private var client: CInt
    private var server: CInt
    private(set) var phase: Phase
    private(set) var transport: Transport
    /// Copy path with `--splice auto`: watches for bulk.
    private var spliceTrigger: SpliceTrigger?
    private var state: DirectLinkState
    private var timeouts: BridgeTimeouts
    private var reporter: ByteCountReporter
    private let metrics: ProxyMetrics?
    private var baseUpstream: UInt64
    private var baseDownstream: UInt64
    let origin: Origin
    private let highWaterMark: Int
    let drain: DrainSignal?
    /// When the bridge began (for the duration in its log line).
    let startTime: NIODeadline
    /// Until when the server connection may take (while connecting).
    private var connectDeadline: NIODeadline?
    /// What events have said of each side's peer.
    private var clientPeer = PeerEnd.open
    private var serverPeer = PeerEnd.open
    /// The side has sent TCP urgent data (`EPOLLPRI`). Reads stop short at an urgent mark, so from then on a
    /// short read of that side is neither "emptied" nor, after its FIN, "the end", and splice reads past
    /// the mark with one read(2) (the urgent byte itself is dropped, as NIO and the socket API do).
    private var clientUrgent = false
    private var serverUrgent = false

    /// When the timeouts are sampled next; `nil` while the timer is stopped (no timeout on, or nothing
    /// held and nothing moving).
    private(set) var nextTick: NIODeadline?
    /// When the listener's drain ends this bridge, once it is draining.
    var drainDeadline: NIODeadline?
    /// The engine's slot for it.
    var slot = -1
    /// The epoll events each socket is registered for now.
    var clientEvents: UInt32 = 0
    var serverEvents: UInt32 = 0
    /// Directions that stopped at the round limit and wait in the engine's list to be pumped again.
    var queuedUpstream = false
    var queuedDownstream = false
    /// Whether it waits in the engine's list of bridges to pump again.
    var isQueued: Bool { self.queuedUpstream || self.queuedDownstream }
    /// Directions whose batched read the bridge has not taken over yet (it must not move to pipes meanwhile).
    var pendingBatchReads = 0
    /// Whether its reads and writes may be batched, and even alone (`--io-uring`).
    private let batchMode: IOUringMode
    /// Bytes each direction's last pump moved: more than a batch slice is bulk, which plain reads of the whole
    /// room serve better than a slice topped up.
    private var lastUpstreamPump = 0
    private var lastDownstreamPump = 0

    /// A bridge NIO hands over, its sockets connected and its pipes made.
    init(_ handover: DirectHandover) {
        self.id = handover.id
        self.serverAddress = nil
        self.client = handover.client
        self.server = handover.server
        self.phase = .forwarding
        self.transport = .splice(upstream: handover.upstreamPipe, downstream: handover.downstreamPipe)
        self.state = handover.state
        self.timeouts = handover.timeouts
        self.reporter = handover.reporter
        self.metrics = handover.metrics
        self.baseUpstream = handover.bytesUpstream
        self.baseDownstream = handover.bytesDownstream
        self.origin = .handover(handover.onEnd)
        self.drain = handover.drain
        self.highWaterMark = handover.state.upstream.capacity
        self.startTime = .now()
        // It came to be spliced: it never copies.
        self.batchMode = .off
    }

    /// A bridge the engine accepted: `client` is the accepted socket, `server` a socket connecting (or,
    /// when `connected`, connected) to the target.
    init(
        id: UInt64,
        client: CInt,
        server: CInt,
        serverAddress: SocketAddress,
        connected: Bool,
        acceptor: DirectAcceptor,
        now: NIODeadline
    ) {
        let configuration = acceptor.configuration
        self.id = id
        self.client = client
        self.server = server
        self.serverAddress = serverAddress
        self.phase = connected ? .forwarding : .connecting
        let capacity = configuration.highWaterMark
        self.highWaterMark = capacity
        if configuration.splice == .always, let pipes = Self.makePipes(capacity) {
            self.transport = .splice(upstream: pipes.upstream, downstream: pipes.downstream)
            self.state = DirectLinkState(
                upstream: DirectFlow(capacity: min(capacity, pipes.upstream.capacity)),
                downstream: DirectFlow(capacity: min(capacity, pipes.downstream.capacity))
            )
        } else {
            self.transport = .copy(upstream: CopyBuffer(capacity: capacity), downstream: CopyBuffer(capacity: capacity))
            self.spliceTrigger = configuration.splice == .auto ? SpliceTrigger(highWaterMark: capacity) : nil
            self.state = DirectLinkState(upstream: DirectFlow(capacity: capacity), downstream: DirectFlow(capacity: capacity))
        }
        self.timeouts = BridgeTimeouts(
            stallTimeout: configuration.stallTimeout,
            idleTimeout: configuration.idleTimeout,
            reportInterval: acceptor.metrics == nil ? nil : BridgeTimeouts.metricsReportInterval,
            now: now
        )
        self.reporter = ByteCountReporter()
        self.metrics = acceptor.metrics
        self.baseUpstream = 0
        self.baseDownstream = 0
        self.origin = .accepted(acceptor)
        self.drain = acceptor.drainSignal
        self.startTime = now
        self.connectDeadline = connected ? nil : now + configuration.connectTimeout
        self.batchMode = configuration.ioUring
    }

    var bytesUpstream: UInt64 { self.baseUpstream &+ self.state.upstream.moved }
    var bytesDownstream: UInt64 { self.baseDownstream &+ self.state.downstream.moved }

    /// This side's socket, -1 once closed.
    func descriptor(_ side: Side) -> CInt {
        side == .client ? self.client : self.server
    }

    /// Whether bytes pass through user space (then every socket stays registered for everything, and
    /// nothing is re-registered: epoll_ctl once per socket).
    var isCopying: Bool {
        if case .copy = self.transport { return true }
        return false
    }

    /// What an event has said of a peer, which decides how its socket is read.
    enum PeerEnd {
        /// Nothing yet: a short read emptied the socket, and any later byte raises a new edge.
        case open
        /// It hung up with an error: read until a read fails, so that the reset is seen (a short read may
        /// leave it behind with no further edge).
        case hungUp
        /// Its clean FIN (`EPOLLRDHUP` without `EPOLLERR`): nothing can follow the bytes in the socket, so a
        /// short read is the end of the stream and the read that would return 0 is not made.
        case finished
    }

    /// An event reported the peer's FIN (or a hangup) on `side`; `cleanly` when it carried no error.
    func peerClosed(_ side: Side, cleanly: Bool) {
        let seen = side == .client ? self.clientPeer : self.serverPeer
        let now: PeerEnd = cleanly || seen == .finished ? .finished : .hungUp
        if side == .client { self.clientPeer = now } else { self.serverPeer = now }
    }

    /// An event reported urgent data (`EPOLLPRI`) on `side`.
    func sawUrgentData(on side: Side) {
        if side == .client { self.clientUrgent = true } else { self.serverUrgent = true }
    }

    /// Bytes held for `side`'s socket, not yet written to it.
    func heldFor(_ side: Side) -> Int {
        side == .client ? self.state.downstream.held : self.state.upstream.held
    }

    // MARK: Connecting

    /// The server socket reported readiness while connecting: the connect is done, one way or the other.
    /// - Parameter reportedFailure: the event carried `EPOLLERR` or `EPOLLHUP` (a plain `EPOLLOUT` is a
    ///   connected socket, which saves asking for `SO_ERROR`).
    /// - Returns: the connect's error (`errno`), or `nil` when it succeeded and the bridge now forwards.
    func finishConnect(reportedFailure: Bool) -> CInt? {
        if reportedFailure {
            let error = LinuxSocketOptions.pendingError(descriptor: self.server)
            return error == 0 ? ECONNREFUSED : error
        }
        self.phase = .forwarding
        self.connectDeadline = nil
        return nil
    }

    // MARK: Moving bytes

    /// What a pump did to the bridge as a whole.
    enum PumpResult: Equatable {
        /// Waiting for readiness.
        case blocked
        /// Pump again soon.
        case yielded
        /// The bridge must end.
        case end(CloseReason)
    }

    /// Where the first read of `side`'s socket may be batched (``IOBatch``): a copying bridge whose direction
    /// from `side` holds nothing and reads as usual (no end seen yet, its sink open), and is not moving bulk
    /// (its last pump moved more than a slice: plain reads of the whole room suit it better). `nil` otherwise.
    func batchPlan(for side: Side) -> (source: CInt, sink: CInt, room: Int)? {
        let lastPump = side == .client ? self.lastUpstreamPump : self.lastDownstreamPump
        guard self.batchMode != .off, self.phase == .forwarding, self.isCopying, lastPump <= IOBatch.sliceSize else {
            return nil
        }
        let peer = side == .client ? self.clientPeer : self.serverPeer
        let urgent = side == .client ? self.clientUrgent : self.serverUrgent
        let flow = side == .client ? self.state.upstream : self.state.downstream
        let source = self.descriptor(side)
        let sink = self.descriptor(side == .client ? .server : .client)
        guard peer == .open, !urgent, flow.held == 0, !flow.sourceEnded, !flow.sinkShut, source >= 0, sink >= 0 else {
            return nil
        }
        return (source, sink, flow.capacity)
    }

    /// Whether its reads are batched even when no other socket of the poll is (`--io-uring always`).
    var batchesAlone: Bool { self.batchMode == .always }

    /// Moves what can move in `direction`, then closes sockets that are done.
    /// - Parameters:
    ///   - rounds: read-and-write rounds before the pump yields.
    ///   - batched: the ``IOBatch`` slot that already made this direction's first read and write.
    func pump(_ direction: Direction, rounds: Int, scratch: CopyScratch, batched: BatchSlot? = nil) -> PumpResult {
        guard self.phase == .forwarding else { return .blocked }
        let outcome: DirectFlow.Outcome
        switch (self.transport, direction) {
        case (.splice(let upstream, _), .upstream):
            let emptyRoom = self.state.upstream.capacity
            outcome = self.state.upstream.pump(
                SpliceDirectionIO(
                    source: self.client, pipe: upstream, sink: self.server,
                    urgent: self.clientUrgent, emptyRoom: emptyRoom
                ),
                rounds: rounds,
                closesSinkAtEnd: self.state.downstream.isFinished
            )
        case (.splice(_, let downstream), .downstream):
            let emptyRoom = self.state.downstream.capacity
            outcome = self.state.downstream.pump(
                SpliceDirectionIO(
                    source: self.server, pipe: downstream, sink: self.client,
                    urgent: self.serverUrgent, emptyRoom: emptyRoom
                ),
                rounds: rounds,
                closesSinkAtEnd: self.state.upstream.isFinished
            )
        case (.copy(let upstream, _), .upstream):
            let before = self.state.upstream.moved
            outcome = self.state.upstream.pump(
                CopyDirectionIO(source: self.client, buffer: upstream, sink: self.server, scratch: scratch, batched: batched),
                rounds: rounds,
                stopAtShortRead: self.clientPeer == .open && !self.clientUrgent,
                endAtShortRead: self.clientPeer == .finished && !self.clientUrgent,
                closesSinkAtEnd: self.state.downstream.isFinished
            )
            self.lastUpstreamPump = Int(truncatingIfNeeded: self.state.upstream.moved &- before)
            self.watchForBulk(self.lastUpstreamPump, .upstream)
        case (.copy(_, let downstream), .downstream):
            let before = self.state.downstream.moved
            outcome = self.state.downstream.pump(
                CopyDirectionIO(source: self.server, buffer: downstream, sink: self.client, scratch: scratch, batched: batched),
                rounds: rounds,
                stopAtShortRead: self.serverPeer == .open && !self.serverUrgent,
                endAtShortRead: self.serverPeer == .finished && !self.serverUrgent,
                closesSinkAtEnd: self.state.upstream.isFinished
            )
            self.lastDownstreamPump = Int(truncatingIfNeeded: self.state.downstream.moved &- before)
            self.watchForBulk(self.lastDownstreamPump, .downstream)
        }
        if let reason = DirectLinkState.failure(outcome, in: direction) {
            return .end(reason)
        }
        while true {
            switch self.state.nextAction() {
            case .none:
                return outcome == .yielded ? .yielded : .blocked
            case .closeSocket(let side):
                self.closeSocket(side)
            case .end(let reason):
                return .end(reason)
            }
        }
    }

    /// `--splice auto` on the copy path: a bridge that carries bulk moves to pipes once nothing is held
    /// in user space. Without pipes (descriptors or pipe quota used up) it stays on the copy path.
    private func watchForBulk(_ count: Int, _ direction: Direction) {
        guard count > 0, var trigger = self.spliceTrigger else { return }
        let isBulk = trigger.read(count, direction)
        self.spliceTrigger = trigger
        guard isBulk, self.state.upstream.held == 0, self.state.downstream.held == 0, self.pendingBatchReads == 0 else {
            return
        }
        self.spliceTrigger = nil
        guard let pipes = Self.makePipes(self.highWaterMark) else { return }
        if case .copy(let up, let down) = self.transport {
            up.discard()
            down.discard()
        }
        self.transport = .splice(upstream: pipes.upstream, downstream: pipes.downstream)
        self.state.upstream.resize(min(self.highWaterMark, pipes.upstream.capacity))
        self.state.downstream.resize(min(self.highWaterMark, pipes.downstream.capacity))
        if case .accepted(let acceptor) = self.origin { acceptor.spliced(self) }
    }

    /// A pipe per direction, or `nil` (descriptors or pipe quota used up).
    private static func makePipes(_ size: Int) -> (upstream: SplicePipe, downstream: SplicePipe)? {
        guard let upstream = SplicePipe.make(size: size) else { return nil }
        guard let downstream = SplicePipe.make(size: size) else {
            upstream.close()
            return nil
        }
        return (upstream, downstream)
    }

    /// What `side`'s socket must be watched for now (see ``DirectLinkState/interest(_:)``).
    func interest(_ side: Side) -> (readable: Bool, writable: Bool) {
        self.state.interest(side)
    }

    /// Bytes read from both sides so far (any change is traffic).
    var trafficBytes: UInt64 { self.state.upstream.moved &+ self.state.downstream.moved }

    // MARK: Timeouts

    /// Starts the timeout timer if it is stopped and a timeout is on: at the handover, and when bytes
    /// move again after the timer stopped.
    /// - Returns: the tick now due, if the timer was started.
    func startTimerIfStopped(now: NIODeadline) -> NIODeadline? {
        guard self.timerIsStopped else { return nil }
        self.timeouts.restart(now: now)
        let next = now + self.timeouts.samplingInterval
        self.nextTick = next
        return next
    }

    /// Whether a timeout is on but its timer stopped (checked before reading the clock).
    var timerIsStopped: Bool { self.nextTick == nil && self.timeouts.isEnabled && self.phase == .forwarding }

    /// Samples the timeouts if their tick is due, and checks the drain and connect deadlines.
    /// - Returns: the reason to end the bridge, if one fired.
    func tick(now: NIODeadline) -> CloseReason? {
        if let drainDeadline, now >= drainDeadline {
            return .drainTimeout
        }
        if let connectDeadline, now >= connectDeadline {
            return .connectTimeout
        }
        guard let nextTick, now >= nextTick else { return nil }
        let decision = self.timeouts.tick(
            now: now,
            trafficBytes: self.bytesUpstream &+ self.bytesDownstream,
            upstream: self.sample(.upstream),
            downstream: self.sample(.downstream)
        )
        self.reporter.report(upstream: self.bytesUpstream, downstream: self.bytesDownstream, to: self.metrics)
        switch decision {
        case .sampleAgain(let delay):
            self.nextTick = now + delay
            return nil
        case .stop:
            self.nextTick = nil
            return nil
        case .expire(let reason):
            return reason
        }
    }

    /// The earliest moment this bridge needs the engine to wake up for.
    var nextDeadline: NIODeadline? {
        [self.nextTick, self.drainDeadline, self.connectDeadline].lazy.compactMap { $0 }.min()
    }

    /// What a direction holds and what its sink's peer has acknowledged: the stall timeout judges
    /// progress at the socket, as on the NIO path.
    private func sample(_ direction: Direction) -> BridgeTimeouts.Sample {
        let flow = direction == .upstream ? self.state.upstream : self.state.downstream
        let sink = direction == .upstream ? self.server : self.client
        guard sink >= 0 else { return .init(held: 0, delivered: 0) }
        return .init(held: flow.held, delivered: LinuxSocketOptions.bytesAcknowledged(descriptor: sink) ?? 0)
    }

    // MARK: Ending

    /// A socket reported an error (`EPOLLERR`): the pending error, if any, is that side's reset.
    func checkError(on side: Side) -> CloseReason? {
        let descriptor = self.descriptor(side)
        guard descriptor >= 0, LinuxSocketOptions.pendingError(descriptor: descriptor) != 0 else { return nil }
        return side == .client ? .clientReset : .serverReset
    }

    /// Whether `side`'s socket closes with a reset: always for an abortive reason, and at an idle or drain
    /// timeout when bytes to or from it are pending (``LinuxSocketOptions/closingCutsStream(peer:partner:heldFor:heldFrom:)``).
    private func resetsOnClose(_ side: Side, _ reason: CloseReason) -> Bool {
        if reason.isAbortive { return true }
        guard reason.resetsCutStreams, self.descriptor(side) >= 0 else { return false }
        let toward = side == .client ? self.state.downstream : self.state.upstream
        let from = side == .client ? self.state.upstream : self.state.downstream
        return LinuxSocketOptions.closingCutsStream(
            peer: self.descriptor(side),
            partner: self.descriptor(side.partner),
            heldFor: toward.held,
            heldFrom: from.held
        )
    }

    /// The server connection failed, so what the client sent while it was pending goes nowhere: it is read
    /// and dropped (counted as upstream bytes, at most 64 KiB), so that closing the client's socket sends a
    /// FIN rather than the reset close(2) sends over unread bytes.
    private func discardClientInput() {
        guard self.client >= 0 else { return }
        self.baseUpstream &+= UInt64(LinuxSocketOptions.discardInput(descriptor: self.client))
    }

    private func closeSocket(_ side: Side) {
        // The engine's epoll forgets a socket when its last descriptor closes; ours is the last one.
        switch side {
        case .client:
            if self.client >= 0 { closeDescriptor(self.client) }
            self.client = -1
        case .server:
            if self.server >= 0 { closeDescriptor(self.server) }
            self.server = -1
        }
    }

    /// Closes everything still open (with a reset towards peers still connected when the reason is
    /// abortive, SPEC §2 rule 6b), reports the last bytes, and tells whoever started the bridge.
    func end(_ reason: CloseReason) {
        if reason.dropsClientInput { self.discardClientInput() }
        // Asked of both sockets before either closes (a close drops the other's source).
        let resets = (client: self.resetsOnClose(.client, reason), server: self.resetsOnClose(.server, reason))
        for side in [Side.client, .server] where self.descriptor(side) >= 0 {
            if side == .client ? resets.client : resets.server {
                LinuxSocketOptions.setResetOnClose(descriptor: self.descriptor(side))
            }
            self.closeSocket(side)
        }
        switch self.transport {
        case .splice(let upstream, let downstream):
            upstream.close()
            downstream.close()
        case .copy(let upstream, let downstream):
            upstream.discard()
            downstream.discard()
        }
        self.reporter.report(upstream: self.bytesUpstream, downstream: self.bytesDownstream, to: self.metrics)
        switch self.origin {
        case .handover(let onEnd):
            onEnd(
                DirectBridgeEnd(
                    reason: reason,
                    bytesUpstream: self.bytesUpstream,
                    bytesDownstream: self.bytesDownstream,
                    reporter: self.reporter
                )
            )
        case .accepted(let acceptor):
            acceptor.bridgeEnded(self, reason: reason, now: .now())
        }
    }
}

@available(*, unavailable)
extension DirectBridge: Sendable {}
