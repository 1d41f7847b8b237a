import NIOCore

/// The bridge's one timer: it samples both directions for the stall and idle timeouts (see
/// ``BridgeTimeouts``) and reports byte counts to the metrics as it goes.
extension Bridge {
    func startTimer() {
        guard self.timer == nil, self.timeouts.isEnabled, self.machine.isForwarding else { return }
        self.timeouts.restart(now: self.eventLoop.now)
        self.scheduleTick(in: self.timeouts.samplingInterval)
    }

    /// Arms the timer with a callback handler rather than a closure: NIO's event loops keep such a
    /// callback in their task queue as it is, where `scheduleTask` allocates a task, a promise and the
    /// closure's context on every tick.
    private func scheduleTick(in delay: TimeAmount) {
        // Scheduling fails only on an event loop that is shutting down; the bridge's sockets close with it.
        self.timer = try? self.eventLoop.assumeIsolated().scheduleCallback(in: delay, handler: BridgeTick(bridge: self))
    }

    fileprivate func tick() {
        self.timer = nil
        guard self.machine.isForwarding else { return }
        let decision = self.timeouts.tick(
            now: self.eventLoop.now,
            // Delayed chunks written count as traffic: a rate pacing out what came with a FIN, or
            // `--latency`, moves bytes while nothing is read.
            trafficBytes: self.bytesUpstream &+ self.bytesDownstream &+ self.delayedBytesWritten,
            upstream: self.serverHandler.sample(),
            downstream: self.clientHandler.sample(),
            heldElsewhere: self.shaping?.hasDelayedBytes == true
        )
        self.reportBytes()
        switch decision {
        case .sampleAgain(let delay):
            self.scheduleTick(in: delay)
        case .stop:
            break
        case .expire(let reason):
            self.logger.debug("bridge timed out", metadata: ["bridge.id": .stringConvertible(self.id), "close.reason": "\(reason)"])
            self.perform(self.machine.abort(reason))
        }
    }

    /// Adds the bytes moved since the last report to the metrics (at each timer tick and at the end,
    /// never per chunk).
    func reportBytes() {
        self.byteReporter.report(
            upstream: self.bytesUpstream,
            downstream: self.bytesDownstream,
            to: self.observers.metrics
        )
    }

    func cancelTimers() {
        self.timer?.cancel()
        self.timer = nil
        // Only armed timers are touched: the arrays start as a statically allocated constant, and any
        // mutating access (`self.rateTimers[index]?.cancel()` is one) copies them, an allocation per close.
        for index in 0..<2 {
            if let rateTimer = self.rateTimers[index] {
                rateTimer.cancel()
                self.rateTimers[index] = nil
            }
            if let delayTimer = self.delayTimers[index] {
                delayTimer.cancel()
                self.delayTimers[index] = nil
            }
        }
        self.drainTimer?.cancel()
        self.drainTimer = nil
        self.spliceTimer?.cancel()
        self.spliceTimer = nil
    }
}

/// The sampling timer's callback: one strong reference to the bridge, so NIO stores it without boxing it.
private struct BridgeTick: NIOScheduledCallbackHandler {
    let bridge: Bridge

    func handleScheduledCallback(eventLoop: some EventLoop) {
        self.bridge.tick()
    }
}
