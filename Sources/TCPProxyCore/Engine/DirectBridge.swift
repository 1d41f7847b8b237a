import NIOCore

/// How a spliced bridge ended, for the ``Bridge`` that handed it over.
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

/// A bridge the splice engine owns: two sockets (duplicates of the ones NIO had, which NIO has closed),
/// two pipes, the flows between them, and the bridge's timeouts.
///
/// Built from a ``DirectHandover`` and from then on touched only by the engine's thread, so it needs no
/// locks; the data path allocates nothing and logs nothing.
final class DirectBridge {
    typealias Side = BridgeStateMachine.Side

    let id: UInt64
    private var client: CInt
    private var server: CInt
    private let upstreamPipe: SplicePipe
    private let downstreamPipe: SplicePipe
    private var state: DirectLinkState
    private var timeouts: BridgeTimeouts
    private var reporter: ByteCountReporter
    private let metrics: ProxyMetrics?
    private let baseUpstream: UInt64
    private let baseDownstream: UInt64
    private let onEnd: @Sendable (DirectBridgeEnd) -> Void
    let drain: DrainSignal?

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
    /// Whether it waits in the engine's list of bridges to pump again.
    var isQueued = false

    init(_ handover: DirectHandover) {
        self.id = handover.id
        self.client = handover.client
        self.server = handover.server
        self.upstreamPipe = handover.upstreamPipe
        self.downstreamPipe = handover.downstreamPipe
        self.state = handover.state
        self.timeouts = handover.timeouts
        self.reporter = handover.reporter
        self.metrics = handover.metrics
        self.baseUpstream = handover.bytesUpstream
        self.baseDownstream = handover.bytesDownstream
        self.onEnd = handover.onEnd
        self.drain = handover.drain
    }

    var bytesUpstream: UInt64 { self.baseUpstream &+ self.state.upstream.moved }
    var bytesDownstream: UInt64 { self.baseDownstream &+ self.state.downstream.moved }

    /// This side's socket, -1 once closed.
    func descriptor(_ side: Side) -> CInt {
        side == .client ? self.client : self.server
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

    /// Moves what can move in `direction`, then closes sockets that are done.
    func pump(_ direction: Direction) -> PumpResult {
        let outcome: DirectFlow.Outcome
        switch direction {
        case .upstream:
            let io = SpliceDirectionIO(source: self.client, pipe: self.upstreamPipe, sink: self.server)
            outcome = self.state.upstream.pump(io)
        case .downstream:
            let io = SpliceDirectionIO(source: self.server, pipe: self.downstreamPipe, sink: self.client)
            outcome = self.state.downstream.pump(io)
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
    var timerIsStopped: Bool { self.nextTick == nil && self.timeouts.isEnabled }

    /// Samples the timeouts if their tick is due, and checks the drain deadline.
    /// - Returns: the reason to end the bridge, if one fired.
    func tick(now: NIODeadline) -> CloseReason? {
        if let drainDeadline, now >= drainDeadline {
            return .drainTimeout
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
        switch (self.nextTick, self.drainDeadline) {
        case (let tick?, let drain?): min(tick, drain)
        case (let tick?, nil): tick
        case (nil, let drain?): drain
        case (nil, nil): nil
        }
    }

    /// What a direction holds (its pipe) and what its sink's peer has acknowledged: the stall timeout
    /// judges progress at the socket, as on the NIO path.
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
    /// abortive, SPEC §2 rule 6b), reports the last bytes, and tells the bridge.
    func end(_ reason: CloseReason) {
        for side in [Side.client, .server] where self.descriptor(side) >= 0 {
            if reason.isAbortive { LinuxSocketOptions.setResetOnClose(descriptor: self.descriptor(side)) }
            self.closeSocket(side)
        }
        self.upstreamPipe.close()
        self.downstreamPipe.close()
        self.reporter.report(upstream: self.bytesUpstream, downstream: self.bytesDownstream, to: self.metrics)
        self.onEnd(
            DirectBridgeEnd(
                reason: reason,
                bytesUpstream: self.bytesUpstream,
                bytesDownstream: self.bytesDownstream,
                reporter: self.reporter
            )
        )
    }
}

@available(*, unavailable)
extension DirectBridge: Sendable {}
