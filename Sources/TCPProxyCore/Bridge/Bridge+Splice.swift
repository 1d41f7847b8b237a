import NIOCore

/// Moving a bridge from NIO to the splice engine (docs/BRIDGE.md, "The splice path").
///
/// NIO reads a socket whenever it sees the peer's EOF, whatever `read()` says, so a socket cannot be
/// spliced while a NIO channel holds it. The handover therefore stops reading, waits until both channels
/// have written everything they hold, takes and duplicates both descriptors, closes the NIO channels
/// (which closes only NIO's descriptors) and gives the duplicates, with two pipes, to the engine. The
/// bridge stays alive, quiet, until the engine reports the end; then it logs and reports as always.
/// Whatever fails before the channels are closed leaves the bridge on NIO, unharmed.
extension Bridge {
    /// Where the bridge stands with regard to splicing.
    enum SpliceStage {
        /// It stays on NIO: `--splice never`, an option that must see the chunks, or it gave up.
        case off
        /// On NIO, watching for bulk (`auto`), or waiting for a moment it can hand over (`always`).
        case watching(SpliceTrigger)
        /// Reads are held while both channels write what they hold. `readDuringBarrier`: a read that was
        /// already under way delivered bytes after the barrier was placed, so another barrier follows.
        case handingOver(readDuringBarrier: Bool, barriers: Int)
        /// The engine has the sockets; NIO events are stale and ignored.
        case handedOver
    }

    /// How often a bridge tries to hand over before it stays on NIO for good.
    private static let spliceAttemptLimit = 3
    /// The longest a handover may hold reads while the barrier waits. A handover only starts when NIO holds
    /// nothing for either socket, so the barrier passes at once unless a write is under way; should a sink
    /// stop taking bytes just then, the bridge goes back to reading on NIO rather than pause the other
    /// direction behind it.
    private static let barrierTimeout = TimeAmount.milliseconds(200)
    /// Barriers per attempt: after a read that was already under way, one more is enough.
    private static let barrierLimit = 3

    /// Whether NIO must not read now (the handover needs both sockets quiet).
    var spliceHoldsReads: Bool {
        switch self.spliceStage {
        case .handingOver, .handedOver: true
        case .off, .watching: false
        }
    }

    /// Whether the engine owns the sockets.
    var isHandedOver: Bool {
        if case .handedOver = self.spliceStage { return true }
        return false
    }

    /// Both sides are connected and the early data is written: decide how this bridge may splice.
    func startSplicing() {
        guard self.isPlainPath, self.configuration.splice != .never else {
            self.spliceStage = .off
            return
        }
        self.spliceStage = .watching(SpliceTrigger(highWaterMark: self.configuration.highWaterMark))
        if self.configuration.splice == .always {
            self.beginHandover()
        }
    }

    /// A chunk of `count` bytes was read from `side` and forwarded on the NIO path (not flushed yet).
    func spliceObserve(_ count: Int, from side: Side) {
        switch self.spliceStage {
        case .watching(var trigger):
            _ = trigger.read(count, side.readDirection)
            self.spliceStage = .watching(trigger)
        case .handingOver(_, let barriers):
            self.spliceStage = .handingOver(readDuringBarrier: true, barriers: barriers)
        case .off, .handedOver:
            break
        }
    }

    /// A read burst ended and what it read was flushed: if the bridge carries bulk (or `always`), hand it
    /// over now, while NIO most likely holds nothing for either socket.
    func spliceReadBurstEnded() {
        guard case .watching(let trigger) = self.spliceStage,
            trigger.isBulk || self.configuration.splice == .always
        else { return }
        self.beginHandover()
    }

    /// The half-close or a channel's writability changed (`always` waits for a pending write shutdown to
    /// take effect, or for NIO's buffers to empty): try again.
    func spliceRetryIfWaiting() {
        guard self.configuration.splice == .always, case .watching = self.spliceStage else { return }
        self.beginHandover()
    }

    /// Something happened on a socket while the handover waited for its barrier (EOF, an error, a close):
    /// the bridge stays on NIO and handles it there; `auto` may try again later.
    func abandonHandover() {
        guard case .handingOver = self.spliceStage else { return }
        self.spliceTimer?.cancel()
        self.spliceTimer = nil
        self.spliceStage =
            self.spliceAttempts < Self.spliceAttemptLimit
            ? .watching(SpliceTrigger(highWaterMark: self.configuration.highWaterMark)) : .off
        self.clientHandler.resumeReadingIfPaused()
        self.serverHandler.resumeReadingIfPaused()
    }

    // MARK: The handover

    private func beginHandover() {
        guard let readiness = self.machine.spliceReadiness, self.spliceAttempts < Self.spliceAttemptLimit,
            readiness.upstreamEnded || self.serverHandler.holdsNothing,
            readiness.downstreamEnded || self.clientHandler.holdsNothing
        else { return }
        self.spliceAttempts += 1
        self.spliceStage = .handingOver(readDuringBarrier: false, barriers: 1)
        let attempt = self.spliceAttempts
        self.spliceTimer = self.eventLoop.assumeIsolated().scheduleTask(in: Self.barrierTimeout) {
            guard self.spliceAttempts == attempt else { return }
            self.spliceTimer = nil
            self.abandonHandover()
        }
        self.placeBarrier()
    }

    /// Writes an empty buffer to each channel that can still be written: it completes after everything
    /// written before it, so when both complete, NIO holds nothing for either socket.
    private func placeBarrier() {
        guard let readiness = self.machine.spliceReadiness else {
            self.abandonHandover()
            return
        }
        var barriers: [EventLoopFuture<Void>] = []
        if !readiness.upstreamEnded, let barrier = self.serverHandler.writeBarrier() { barriers.append(barrier) }
        if !readiness.downstreamEnded, let barrier = self.clientHandler.writeBarrier() { barriers.append(barrier) }
        EventLoopFuture.andAllSucceed(barriers, on: self.eventLoop).assumeIsolated().whenComplete { result in
            self.barrierPassed(result)
        }
    }

    private func barrierPassed(_ result: Result<Void, Error>) {
        guard case .handingOver(let readDuringBarrier, let barriers) = self.spliceStage else { return }
        guard case .success = result else {
            // The failed write is reported to the machine on its own (errorCaught or a close).
            self.abandonHandover()
            return
        }
        if readDuringBarrier {
            guard barriers < Self.barrierLimit else {
                self.abandonHandover()
                return
            }
            self.spliceStage = .handingOver(readDuringBarrier: false, barriers: barriers + 1)
            self.placeBarrier()
            return
        }
        self.completeHandover()
    }

    private func completeHandover() {
        // First, so the reporter the handover carries knows what NIO's part has given the metrics already
        // (the engine reports from there; a reporter copied before this would count NIO's last bytes twice).
        self.reportBytes()
        guard let readiness = self.machine.spliceReadiness,
            let clientChannel = self.clientHandler.context?.channel,
            let serverChannel = self.serverChannel,
            let handover = self.takeDescriptors(client: clientChannel, server: serverChannel, readiness: readiness),
            let engine = DirectEngine.shared
        else {
            // Nothing was taken (or it was given back): NIO keeps the bridge for good.
            self.spliceAttempts = Self.spliceAttemptLimit
            self.abandonHandover()
            return
        }
        self.spliceStage = .handedOver
        self.cancelTimers()  // the barrier's timer too
        self.logger.debug(
            "bridge spliced",
            metadata: [
                "bridge.id": .stringConvertible(self.id), "bytes.upstream": .stringConvertible(self.bytesUpstream),
                "bytes.downstream": .stringConvertible(self.bytesDownstream),
            ]
        )
        // NIO closes only its own descriptors; the sockets live on in the duplicates.
        clientChannel.close(promise: nil)
        serverChannel.close(promise: nil)
        engine.add(handover)
    }

    /// Finds, checks and duplicates both sockets and makes the two pipes; `nil` (with everything made so
    /// far closed again) if any step fails: descriptors exhausted, pipe quota used up, an unknown channel.
    private func takeDescriptors(
        client: Channel,
        server: Channel,
        readiness: BridgeStateMachine.SpliceReadiness
    ) -> DirectHandover? {
        guard let clientFD = ChannelDescriptor.descriptor(of: client),
            let serverFD = ChannelDescriptor.descriptor(of: server),
            DirectEngine.shared != nil
        else { return nil }
        let size = self.configuration.highWaterMark
        var made: [CInt] = []
        var pipes: [SplicePipe] = []
        func giveBack() -> DirectHandover? {
            made.forEach(closeDescriptor)
            pipes.forEach { $0.close() }
            return nil
        }
        guard let clientCopy = ChannelDescriptor.duplicate(clientFD) else { return giveBack() }
        made.append(clientCopy)
        guard let serverCopy = ChannelDescriptor.duplicate(serverFD) else { return giveBack() }
        made.append(serverCopy)
        guard let upstreamPipe = SplicePipe.make(size: size) else { return giveBack() }
        pipes.append(upstreamPipe)
        guard let downstreamPipe = SplicePipe.make(size: size) else { return giveBack() }

        let state = DirectLinkState(
            upstream: DirectFlow(capacity: min(size, upstreamPipe.capacity), ended: readiness.upstreamEnded),
            downstream: DirectFlow(capacity: min(size, downstreamPipe.capacity), ended: readiness.downstreamEnded)
        )
        let loopBound = NIOLoopBound(self, eventLoop: self.eventLoop)
        let eventLoop = self.eventLoop
        return DirectHandover(
            id: self.id,
            client: clientCopy,
            server: serverCopy,
            upstreamPipe: upstreamPipe,
            downstreamPipe: downstreamPipe,
            state: state,
            timeouts: self.timeouts,
            bytesUpstream: self.bytesUpstream,
            bytesDownstream: self.bytesDownstream,
            reporter: self.byteReporter,
            metrics: self.observers.metrics,
            drain: self.spliceDrain,
            onEnd: { end in
                eventLoop.execute { loopBound.value.splicedBridgeEnded(end) }
            }
        )
    }

    /// The engine ended the bridge and closed its sockets: report it as any bridge's end.
    private func splicedBridgeEnded(_ end: DirectBridgeEnd) {
        self.bytesUpstream = end.bytesUpstream
        self.bytesDownstream = end.bytesDownstream
        self.byteReporter = end.reporter
        self.serverHandler.connectionEnded()
        self.reportEnd(end.reason)
    }
}
