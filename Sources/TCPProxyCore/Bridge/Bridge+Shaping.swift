import Logging
import NIOCore

/// The data path with options on: rate limits, `--log-data`, `--corrupt` and `--latency`. Only bridges
/// whose configuration asks for one of them come here; the others hand chunks straight over.
extension Bridge {
    /// Whether the options let `side` be read now. A rate-limited side that must wait gets a timer that
    /// lets it read again; a delayed direction holding a high-water mark waits for deliveries.
    func shapingAllowsRead(_ side: Side) -> Bool {
        let direction = side.readDirection
        guard self.shaping!.delayedBytes(direction) < self.configuration.highWaterMark else { return false }
        if let wait = self.shaping!.rateWait(direction, now: self.eventLoop.now) {
            self.resumeReading(side, after: wait)
            return false
        }
        return true
    }

    private func resumeReading(_ side: Side, after wait: TimeAmount) {
        let index = side.readDirection.index
        guard self.rateTimers[index] == nil else { return }
        self.rateTimers[index] = self.eventLoop.assumeIsolated().scheduleTask(in: wait) {
            self.rateTimers[index] = nil
            self.handler(side).resumeReadingIfPaused()
        }
    }

    /// Passes a chunk read from `side` through the options and the capture, then on towards the partner.
    /// - Parameter countingRate: whether the read still has to be counted against the rate (early data
    ///   was counted when it was read).
    func shape(_ buffer: ByteBuffer, from side: Side, countingRate: Bool) {
        var buffer = buffer
        let direction = side.readDirection
        let now = self.eventLoop.now
        if countingRate {
            self.shaping?.consume(buffer.readableBytes, direction, now: now)
        }
        self.shaping?.corrupt(&buffer, direction)
        if self.configuration.logData { self.logger.logData(buffer, direction: direction, bridgeID: self.id) }
        self.conversation?.record(buffer, direction: direction)
        if let hold = self.shaping?.hold(direction) {
            self.shaping!.delay(buffer, direction, now: now, hold: hold)
            self.scheduleDelivery(direction)
        } else {
            self.handler(side.partner).forward(buffer)
        }
    }

    private func scheduleDelivery(_ direction: Direction) {
        let index = direction.index
        guard self.delayTimers[index] == nil, let due = self.shaping?.nextDue(direction) else { return }
        let wait = max(.zero, due - self.eventLoop.now)
        self.delayTimers[index] = self.eventLoop.assumeIsolated().scheduleTask(in: wait) {
            self.delayTimers[index] = nil
            self.deliverDue(direction)
        }
    }

    /// Writes the delayed chunks of `direction` whose time has come, then passes on a waiting EOF and
    /// lets the source read again.
    private func deliverDue(_ direction: Direction) {
        guard self.shaping != nil else { return }
        let sink = direction == .upstream ? self.serverHandler : self.clientHandler
        let source = direction == .upstream ? self.clientHandler : self.serverHandler
        let now = self.eventLoop.now
        while let buffer = self.shaping!.popDue(direction, now: now) {
            self.delayedBytesWritten &+= UInt64(buffer.readableBytes)
            sink.forward(buffer)
        }
        sink.flushIfNeeded()
        if self.shaping!.takeDeferredShutdown(direction) {
            sink.shutdownOutput()
        }
        source.resumeReadingIfPaused()
        self.scheduleDelivery(direction)
        // What was just written may stall at a reader that takes nothing: the stall timer must watch it.
        if self.timer == nil { self.startTimer() }
    }
}
