import NIOCore

/// The bridge's one timer: it samples both directions for the stall and idle timeouts (see
/// ``BridgeTimeouts``) and reports byte counts to the metrics as it goes.
extension Bridge {
    func startTimer() {
        guard self.timer == nil, self.timeouts.isEnabled, self.machine.isForwarding else { return }
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
        guard self.machine.isForwarding else { return }
        let decision = self.timeouts.tick(
            now: self.eventLoop.now,
            trafficBytes: self.bytesUpstream &+ self.bytesDownstream,
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
            self.logger.debug("bridge timed out", metadata: ["bridge.id": "\(self.id)", "close.reason": "\(reason)"])
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
        for index in 0..<2 {
            self.rateTimers[index]?.cancel()
            self.rateTimers[index] = nil
            self.delayTimers[index]?.cancel()
            self.delayTimers[index] = nil
        }
        self.drainTimer?.cancel()
        self.drainTimer = nil
        self.spliceTimer?.cancel()
        self.spliceTimer = nil
    }
}
