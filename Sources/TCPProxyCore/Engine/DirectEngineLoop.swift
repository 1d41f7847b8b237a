import Atomics
import CTCPProxyLinux
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The engine thread's state and loop. A named type, so stack dumps read well.
struct DirectEngineLoop {
    let epoll: CInt
    let wakeUp: CInt
    let activeCount: ManagedAtomic<Int>
    /// Bridges by slot; a slot's generation changes when it is freed, so a stale event is ignored.
    private var slots: [DirectBridge?] = []
    private var generations: [UInt32] = []
    private var freeSlots: [Int] = []
    /// Bridges whose last pump stopped at the round limit: pumped again after the next poll.
    private var queued: [DirectBridge] = []
    /// The batch being pumped again (kept to reuse its storage).
    private var requeued: [DirectBridge] = []
    /// Read-and-write rounds a pump may run in this pass before the bridge yields: many while one bridge
    /// has the engine to itself, one when several have work (``passRounds(_:)``).
    private var rounds = DirectEngineLoop.soloRounds
    /// The earliest timer or drain deadline of any bridge.
    private var nextWake: NIODeadline?
    /// Where copying bridges read to.
    private let scratch = CopyScratch()
    /// Listening sockets this engine accepts from, by index (`nil`: removed).
    private var listeners: [DirectAcceptor?] = []
    /// Listeners taken out of epoll for a moment because descriptors ran out, and when to put them back.
    private var pausedListeners: [(index: Int, until: NIODeadline)] = []
    /// How many events one poll reports at most.
    static let eventCapacity = 64
    /// The fewest readable sockets a poll must report for their reads and writes to be batched.
    static let leastBatch = 2
    /// Batches the first read and write of every readable socket of a poll (`nil`: plain calls). Made by
    /// the first listener that asks for it (`--io-uring auto` or `always`), on this thread, whose ring it is.
    private var batch: IOBatch?
    private var batchWasMade = false
    /// What the batch does for each event of the poll (by event index; a slot of the batch is an event's index).
    private var batchSlots: [BatchSlotState]

    init(epoll: CInt, wakeUp: CInt, activeCount: ManagedAtomic<Int>) {
        self.epoll = epoll
        self.wakeUp = wakeUp
        self.activeCount = activeCount
        self.batchSlots = Array(repeating: .unused, count: Self.eventCapacity)
    }

    mutating func run(takeCommands: () -> [DirectEngine.Command]) {
        // splice(2) into a socket whose peer went away raises SIGPIPE in the calling thread; here it
        // must only fail with EPIPE.
        var signals = sigset_t()
        sigemptyset(&signals)
        sigaddset(&signals, SIGPIPE)
        pthread_sigmask(SIG_BLOCK, &signals, nil)

        let capacity = Self.eventCapacity
        let events = UnsafeMutableBufferPointer<CTCPProxyLinux_Event>.allocate(capacity: capacity)
        defer { events.deallocate() }
        while true {
            let timeout = self.queued.isEmpty ? self.pollTimeout() : 0
            let count = CTCPProxyLinux_epollWait(self.epoll, events.baseAddress, CInt(capacity), timeout)
            if count < 0 {
                if errno == EINTR { continue }
                // Nothing sensible to do but not spin.
                usleep(10_000)
                continue
            }
            self.rounds = self.passRounds(UnsafeMutableBufferPointer(rebasing: events[0..<Int(count)]))
            if let batch = self.batch, count > 0 {
                self.pumpBatched(UnsafeMutableBufferPointer(rebasing: events[0..<Int(count)]), batch)
            }
            for index in 0..<Int(count) {
                let event = events[index]
                if event.token == DirectEngine.wakeUpToken {
                    CTCPProxyLinux_eventDrain(self.wakeUp)
                    for command in takeCommands() { self.perform(command) }
                } else if event.token & DirectEngine.listenerTokenBit != 0 {
                    self.acceptClients(Int(event.token & ~DirectEngine.listenerTokenBit))
                } else {
                    self.handle(event, readDone: self.batchSlots[index].isReadDone)
                    self.batchSlots[index] = .unused
                }
            }
            self.pumpQueued()
            if let nextWake, NIODeadline.now() >= nextWake {
                self.tickAll()
            }
        }
    }

    // MARK: Commands

    private mutating func perform(_ command: DirectEngine.Command) {
        switch command {
        case .add(let handover):
            self.add(DirectBridge(handover))
        case .drainChanged:
            for case let bridge? in self.slots {
                bridge.drainDeadline = bridge.drain?.deadline
                self.wake(at: bridge.nextDeadline)
            }
        case .addListener(let acceptor, let done):
            self.scratch.reserve(acceptor.configuration.highWaterMark)
            if acceptor.configuration.ioUring != .off && !self.batchWasMade {
                self.batchWasMade = true
                self.batch = IOBatch(capacity: Self.eventCapacity)
            }
            let index = self.listeners.count
            self.listeners.append(acceptor)
            let token = DirectEngine.listenerTokenBit | UInt64(index)
            if CTCPProxyLinux_epollAddListener(self.epoll, acceptor.descriptor, token) != 0 {
                acceptor.cannotWatch(errno: errno)
            }
            done(acceptor.configuration.ioUring != .off && self.batch != nil)
        case .removeListener(let acceptor, let done):
            if let index = self.listeners.firstIndex(where: { $0 === acceptor }) {
                _ = CTCPProxyLinux_epollRemove(self.epoll, acceptor.descriptor)
                self.listeners[index] = nil
                self.pausedListeners.removeAll { $0.index == index }
            }
            done()
        }
    }

    // MARK: Accepting

    /// How many clients one wakeup accepts before the engine serves its bridges again (the listening
    /// socket is level-triggered: the rest are reported at the next poll).
    private static let acceptBatch = 32

    private mutating func acceptClients(_ index: Int) {
        guard index < self.listeners.count, let acceptor = self.listeners[index] else { return }
        for _ in 0..<Self.acceptBatch {
            switch acceptor.acceptClient(now: NIODeadline.now()) {
            case .none:
                return
            case .handled:
                continue
            case .bridge(let bridge):
                self.add(bridge)
            case .descriptorsExhausted:
                // Level-triggered, the socket would wake the engine at once again: rest it a moment.
                _ = CTCPProxyLinux_epollRemove(self.epoll, acceptor.descriptor)
                let until = NIODeadline.now() + .milliseconds(100)
                self.pausedListeners.append((index, until))
                self.wake(at: until)
                return
            }
        }
    }

    private mutating func resumePausedListeners(now: NIODeadline) {
        guard !self.pausedListeners.isEmpty else { return }
        var stillPaused: [(index: Int, until: NIODeadline)] = []
        for paused in self.pausedListeners {
            guard let acceptor = self.listeners[paused.index] else { continue }
            if now >= paused.until {
                let token = DirectEngine.listenerTokenBit | UInt64(paused.index)
                _ = CTCPProxyLinux_epollAddListener(self.epoll, acceptor.descriptor, token)
            } else {
                stillPaused.append(paused)
                self.wake(at: paused.until)
            }
        }
        self.pausedListeners = stillPaused
    }

    private mutating func add(_ bridge: DirectBridge) {
        let slot: Int
        if let free = self.freeSlots.popLast() {
            slot = free
            self.slots[slot] = bridge
        } else {
            slot = self.slots.count
            self.slots.append(bridge)
            self.generations.append(0)
        }
        bridge.slot = slot
        self.activeCount.wrappingIncrement(ordering: .relaxed)
        for side in [BridgeStateMachine.Side.client, .server] where bridge.descriptor(side) >= 0 {
            // A copying bridge is registered once for everything: with edge triggers, readiness it has
            // no use for costs a rare wakeup, and changing the registration a call every time.
            // A connecting one must hear of its connect (EPOLLOUT) whatever its transport.
            let everything = bridge.isCopying || bridge.phase == .connecting
            let events = everything ? Self.allEvents : Self.events(bridge.interest(side))
            if CTCPProxyLinux_epollAdd(self.epoll, bridge.descriptor(side), events, self.token(slot, side)) != 0 {
                // Cannot happen for a valid socket; the bridge cannot go on without it.
                self.end(bridge, side == .client ? .clientReset : .serverReset)
                return
            }
            if side == .client { bridge.clientEvents = events } else { bridge.serverEvents = events }
        }
        bridge.drainDeadline = bridge.drain?.deadline
        self.wake(at: bridge.drainDeadline)
        self.wake(at: bridge.nextDeadline)
        if bridge.phase == .forwarding {
            self.startForwarding(bridge)
        }
    }

    /// Both sockets are connected: start the timer and move what is waiting (bytes may have arrived
    /// between NIO's last read and the registration, or while the server connection was made).
    /// - Parameter serverMayHaveBytes: `false` when the event that finished the connect said the new
    ///   server socket is not readable: reading it would only return `EAGAIN`, and bytes that come later
    ///   raise an edge of their own. The client's bytes are read either way: their edges came while the
    ///   bridge was connecting and were not acted on.
    ///
    /// The engine's own connects hold back the ACK that ends the server's handshake, so that the client's
    /// first bytes carry it (``CTCPProxyLinux_connect``). With nothing to send, that ACK goes now: a server
    /// that speaks first must not wait for the delayed-ACK timer (200 ms) to see its connection.
    private mutating func startForwarding(_ bridge: DirectBridge, serverMayHaveBytes: Bool = true) {
        self.wake(at: bridge.startTimerIfStopped(now: NIODeadline.now()))
        // A PROXY header goes first, whole: a fresh socket's send buffer takes its 16 to 232 bytes at once.
        // It carries the held ACK.
        let header = bridge.proxyHeader
        if let header {
            bridge.proxyHeader = nil
            let sent = header.withUnsafeBytes { send(bridge.descriptor(.server), $0.baseAddress, $0.count, CInt(MSG_NOSIGNAL)) }
            guard sent == header.count else {
                self.end(bridge, .serverReset)
                return
            }
        }
        let open = self.pump(bridge, .upstream)
        if open, header == nil, case .accepted = bridge.origin, bridge.bytesUpstream == 0 {
            CTCPProxyLinux_sendHeldACK(bridge.descriptor(.server))
        }
        guard open, serverMayHaveBytes else { return }
        _ = self.pump(bridge, .downstream)
    }

    /// A connecting bridge's event: the server socket's readiness ends the connect; the client's
    /// bytes wait in its socket (SPEC §2 rule 2) unless it went away.
    private mutating func handleConnecting(_ bridge: DirectBridge, _ side: BridgeStateMachine.Side, _ events: UInt32) {
        let failure = CTCPProxyLinux_EPOLLERR | CTCPProxyLinux_EPOLLHUP
        switch side {
        case .client:
            if events & failure != 0 {
                self.end(bridge, .clientReset)
            }
        case .server:
            guard events & (CTCPProxyLinux_EPOLLOUT | failure) != 0 else { return }
            if let error = bridge.finishConnect(reportedFailure: events & failure != 0) {
                if case .accepted(let acceptor) = bridge.origin { acceptor.connectFailed(bridge, errno: error) }
                self.end(bridge, .connectFailed)
                return
            }
            if case .accepted(let acceptor) = bridge.origin { acceptor.connected(bridge) }
            self.startForwarding(bridge, serverMayHaveBytes: events & Self.readEvents != 0)
        }
    }

    // MARK: Events

    private func token(_ slot: Int, _ side: BridgeStateMachine.Side) -> UInt64 {
        UInt64(self.generations[slot]) << 33 | UInt64(slot) << 1 | (side == .client ? 0 : 1)
    }

    /// The live bridge and side an event's token names, or `nil` for a stale token.
    private func bridge(for token: UInt64) -> (DirectBridge, BridgeStateMachine.Side)? {
        let slot = Int((token >> 1) & 0xFFFF_FFFF)
        guard slot < self.slots.count, UInt64(self.generations[slot]) == token >> 33,
            let bridge = self.slots[slot]
        else { return nil }
        let side: BridgeStateMachine.Side = token & 1 == 0 ? .client : .server
        guard bridge.descriptor(side) >= 0 else { return nil }
        return (bridge, side)
    }

    /// The first read of every socket that only became readable (no end, no error, no urgent data: those take
    /// the plain path), and the write of what it read, in two io_uring submissions for the whole poll; then each of
    /// those directions is pumped with its results (``CopyDirectionIO`` replays them), in event order.
    /// Marks in `batchSlots` the events whose read is done.
    private mutating func pumpBatched(_ events: UnsafeMutableBufferPointer<CTCPProxyLinux_Event>, _ batch: IOBatch) {
        let ends = CTCPProxyLinux_EPOLLRDHUP | CTCPProxyLinux_EPOLLHUP | CTCPProxyLinux_EPOLLERR | CTCPProxyLinux_EPOLLPRI
        var candidates = 0
        var alone = false
        for index in events.indices {
            let event = events[index]
            guard event.token & DirectEngine.listenerTokenBit == 0, event.token != DirectEngine.wakeUpToken,
                event.events & CTCPProxyLinux_EPOLLIN != 0, event.events & ends == 0,
                case let (bridge, side)? = self.bridge(for: event.token), let plan = bridge.batchPlan(for: side)
            else { continue }
            self.batchSlots[index] = .planned(bridge, side, plan)
            candidates += 1
            alone = alone || bridge.batchesAlone
        }
        // One socket gains nothing: two submissions cost a little more than a read(2) and a write(2).
        guard candidates >= Self.leastBatch || (alone && candidates > 0) else {
            if candidates > 0 { self.batchSlots.withUnsafeMutableBufferPointer { $0.update(repeating: .unused) } }
            return
        }
        for index in events.indices {
            guard case .planned(let bridge, _, let plan) = self.batchSlots[index] else { continue }
            guard batch.queueReceive(from: plan.source, to: plan.sink, slot: index, room: plan.room) else {
                self.batchSlots[index] = .unused
                continue
            }
            bridge.pendingBatchReads += 1
        }
        if !batch.run() {
            // The ring failed (it should not): what it did is still replayed below, slots it did not get to
            // take the plain calls, and the ring goes (with anything it holds unsubmitted). Plain calls from now on.
            self.batch = nil
        }
        for index in events.indices {
            guard case .planned(let bridge, let side, _) = self.batchSlots[index] else { continue }
            self.batchSlots[index] = .unused
            bridge.pendingBatchReads -= 1
            // An earlier event's pump may have ended the bridge: what was read for it was written already (or,
            // after a failed submission, is dropped); the bridge is closing, so it is not counted either.
            guard bridge.slot >= 0 else { continue }
            _ = self.pump(bridge, DirectLinkState.direction(from: side), on: side, batched: BatchSlot(batch: batch, slot: index))
            self.batchSlots[index] = .readDone
        }
    }

    private mutating func handle(_ event: CTCPProxyLinux_Event, readDone: Bool = false) {
        guard case let (bridge, side)? = self.bridge(for: event.token) else { return }
        let failure = CTCPProxyLinux_EPOLLERR | CTCPProxyLinux_EPOLLHUP
        if event.events & (CTCPProxyLinux_EPOLLRDHUP | CTCPProxyLinux_EPOLLHUP) != 0 {
            let fin = event.events & CTCPProxyLinux_EPOLLRDHUP != 0 && event.events & CTCPProxyLinux_EPOLLERR == 0
            bridge.peerClosed(side, cleanly: fin)
        }
        if event.events & CTCPProxyLinux_EPOLLPRI != 0 {
            bridge.sawUrgentData(on: side)
        }
        if bridge.phase == .connecting {
            self.handleConnecting(bridge, side, event.events)
            return
        }
        if event.events & CTCPProxyLinux_EPOLLERR != 0 {
            // Bytes that came before a reset are still there to read: they go on first, then the reset
            // (the read after them fails with it), as on NIO.
            if event.events & CTCPProxyLinux_EPOLLIN != 0 && !readDone {
                guard self.pump(bridge, DirectLinkState.direction(from: side), on: side) else { return }
            }
            if let reason = bridge.checkError(on: side) {
                self.end(bridge, reason)
                return
            }
        }
        let readable = CTCPProxyLinux_EPOLLIN | CTCPProxyLinux_EPOLLRDHUP | CTCPProxyLinux_EPOLLPRI | failure
        let writable = CTCPProxyLinux_EPOLLOUT | failure
        // Readiness a spliced bridge's socket is registered for but has no use for now woke the engine for
        // nothing: it is dropped (interest is added as soon as it is needed, and dropped only this way, so a
        // steady flow makes no epoll_ctl calls). A copying bridge stays registered for everything.
        var unused: UInt32 = 0
        if !bridge.isCopying {
            let interest = bridge.interest(side)
            if !interest.readable { unused |= CTCPProxyLinux_EPOLLIN | CTCPProxyLinux_EPOLLRDHUP | CTCPProxyLinux_EPOLLPRI }
            if !interest.writable { unused |= CTCPProxyLinux_EPOLLOUT }
        }
        let from = DirectLinkState.direction(from: side)
        if event.events & readable != 0 && !readDone {
            guard self.pump(bridge, from, dropping: unused, on: side) else { return }
        }
        // A copying bridge's writable socket matters only while bytes wait for it; there is nothing to
        // drop either (it stays registered for everything).
        if event.events & writable != 0 && (!bridge.isCopying || bridge.heldFor(side) > 0) {
            _ = self.pump(bridge, from == .upstream ? .downstream : .upstream, dropping: unused, on: side)
        }
    }

    /// Pumps one direction of `bridge` and acts on the result.
    /// - Returns: whether the bridge is still open.
    private mutating func pump(
        _ bridge: DirectBridge,
        _ direction: Direction,
        dropping unused: UInt32 = 0,
        on side: BridgeStateMachine.Side = .client,
        batched: BatchSlot? = nil
    ) -> Bool {
        let before = bridge.trafficBytes
        let result = bridge.pump(direction, rounds: self.rounds, scratch: self.scratch, batched: batched)
        if bridge.timerIsStopped, bridge.trafficBytes != before {
            self.wake(at: bridge.startTimerIfStopped(now: NIODeadline.now()))
        }
        switch result {
        case .blocked:
            self.updateInterest(bridge, dropping: unused, on: side)
            return true
        case .yielded:
            self.updateInterest(bridge, dropping: unused, on: side)
            if !bridge.isQueued { self.queued.append(bridge) }
            switch direction {
            case .upstream: bridge.queuedUpstream = true
            case .downstream: bridge.queuedDownstream = true
            }
            return true
        case .end(let reason):
            self.end(bridge, reason)
            return false
        }
    }

    private static let readEvents = CTCPProxyLinux_EPOLLIN | CTCPProxyLinux_EPOLLRDHUP | CTCPProxyLinux_EPOLLPRI
    private static let allEvents = Self.readEvents | CTCPProxyLinux_EPOLLOUT

    private static func events(_ interest: (readable: Bool, writable: Bool)) -> UInt32 {
        (interest.readable ? Self.readEvents : 0)
            | (interest.writable ? CTCPProxyLinux_EPOLLOUT : 0)
    }

    /// Registers each open socket for what it needs now that it is not registered for yet, and drops
    /// from `side` the `unused` readiness that woke the engine for nothing (unless it is needed again).
    private func updateInterest(_ bridge: DirectBridge, dropping unused: UInt32, on side: BridgeStateMachine.Side) {
        guard !bridge.isCopying else { return }
        let wantedByClient = Self.events(bridge.interest(.client))
        let client = (bridge.clientEvents | wantedByClient) & ~(side == .client ? unused & ~wantedByClient : 0)
        if client != bridge.clientEvents, bridge.descriptor(.client) >= 0 {
            bridge.clientEvents = client
            let token = self.token(bridge.slot, .client)
            _ = CTCPProxyLinux_epollModify(self.epoll, bridge.descriptor(.client), client, token)
        }
        let wantedByServer = Self.events(bridge.interest(.server))
        let server = (bridge.serverEvents | wantedByServer) & ~(side == .server ? unused & ~wantedByServer : 0)
        if server != bridge.serverEvents, bridge.descriptor(.server) >= 0 {
            bridge.serverEvents = server
            let token = self.token(bridge.slot, .server)
            _ = CTCPProxyLinux_epollModify(self.epoll, bridge.descriptor(.server), server, token)
        }
    }

    /// Rounds per pump when a single bridge has work.
    static let soloRounds = 16

    /// How many read-and-write rounds each pump of a pass runs: ``soloRounds`` when the poll's events and
    /// the bridges waiting for another turn all concern one bridge, else one, so bridges take turns a chunk
    /// at a time.
    ///
    /// A bulk sender's TCP waits for the proxy's reads to send its ACKs: the receive queue is full, so the
    /// kernel defers them (`tcp_cleanup_rbuf` sends them at the next read). While one bridge runs 16 rounds
    /// (a megabyte at the default mark) the others' senders hear nothing for milliseconds, past their
    /// tail-loss-probe timeout (two round trips), and retransmit a segment the proxy already has. With
    /// eight streams that was 200–680 spurious retransmissions per 3.7 GB against 10–35 with one round
    /// each (docs/BENCHMARKS.md). A lone bridge keeps its 16: a turn each would add a poll per round.
    private func passRounds(_ events: UnsafeMutableBufferPointer<CTCPProxyLinux_Event>) -> Int {
        var work = PassWork()
        for event in events where event.token & DirectEngine.listenerTokenBit == 0 {
            work.add(bridge: event.token >> 1)
        }
        for bridge in self.queued where bridge.slot >= 0 {
            work.add(bridge: self.token(bridge.slot, .client) >> 1)
        }
        return work.rounds
    }

    /// Gives the directions that hit the round limit another turn, after everyone else had one. Only
    /// those: the other direction re-armed its edge when it last blocked, so reading it again would only
    /// return `EAGAIN` (an upload's idle download was 40% of the splices with eight streams).
    private mutating func pumpQueued() {
        guard !self.queued.isEmpty else { return }
        swap(&self.queued, &self.requeued)
        for bridge in self.requeued {
            let upstream = bridge.queuedUpstream
            let downstream = bridge.queuedDownstream
            bridge.queuedUpstream = false
            bridge.queuedDownstream = false
            guard bridge.slot >= 0, !upstream || self.pump(bridge, .upstream) else { continue }
            if downstream { _ = self.pump(bridge, .downstream) }
        }
        self.requeued.removeAll(keepingCapacity: true)
    }

    // MARK: Time

    private mutating func wake(at deadline: NIODeadline?) {
        guard let deadline else { return }
        if let nextWake, nextWake <= deadline { return }
        self.nextWake = deadline
    }

    /// Milliseconds until the next deadline, rounded up; -1 for none.
    private func pollTimeout() -> CInt {
        guard let nextWake else { return -1 }
        let nanoseconds = (nextWake - NIODeadline.now()).nanoseconds
        guard nanoseconds > 0 else { return 0 }
        return CInt(clamping: (nanoseconds + 999_999) / 1_000_000)
    }

    /// The least time between two passes over all bridges' timers (deadlines are late by at most this).
    private static let tickSpacing = TimeAmount.milliseconds(10)

    private mutating func tickAll() {
        let now = NIODeadline.now()
        self.nextWake = nil
        self.resumePausedListeners(now: now)
        // By index: iterating `slots` itself would copy the array, since `end` writes to it.
        var slot = 0
        while slot < self.slots.count {
            defer { slot += 1 }
            guard let bridge = self.slots[slot] else { continue }
            if let reason = bridge.tick(now: now) {
                // As the NIO bridge does, a connect that timed out is logged as a failed one first.
                if reason == .connectTimeout, case .accepted(let acceptor) = bridge.origin {
                    acceptor.connectTimedOut(bridge)
                }
                self.end(bridge, reason)
            } else {
                self.wake(at: bridge.nextDeadline)
            }
        }
        // Every bridge is visited per pass, so passes are spaced: with thousands of bridges whose
        // samples fall at different moments, a pass per deadline would cost more than the samples.
        if let nextWake, nextWake < now + Self.tickSpacing {
            self.nextWake = now + Self.tickSpacing
        }
    }

    private mutating func end(_ bridge: DirectBridge, _ reason: CloseReason) {
        let slot = bridge.slot
        guard slot >= 0 else { return }
        bridge.slot = -1
        self.slots[slot] = nil
        self.generations[slot] &+= 1
        // 30 bits: a bridge token never has the listener bit (63).
        self.generations[slot] &= 0x3FFF_FFFF
        self.freeSlots.append(slot)
        self.activeCount.wrappingDecrement(ordering: .relaxed)
        bridge.end(reason)
    }
}

/// What an ``IOBatch`` does for one event of a poll.
private enum BatchSlotState {
    /// Nothing: the event takes the plain calls.
    case unused
    /// Its socket's first read (and the write of it) is queued, or about to be.
    case planned(DirectBridge, BridgeStateMachine.Side, (source: CInt, sink: CInt, room: Int))
    /// The batch made that read and its direction was pumped: the event's own read is skipped.
    case readDone

    var isReadDone: Bool {
        if case .readDone = self { return true }
        return false
    }
}

/// Which bridges one pass of the engine has work for, told one event or queued bridge at a time (by the
/// slot and generation of their tokens), and so how many rounds each pump of the pass may run.
struct PassWork {
    private var only: UInt64?
    /// More than one bridge has work.
    private(set) var isShared = false

    mutating func add(bridge identity: UInt64) {
        guard let only else {
            self.only = identity
            return
        }
        if only != identity { self.isShared = true }
    }

    var rounds: Int { self.isShared ? 1 : DirectEngineLoop.soloRounds }
}
