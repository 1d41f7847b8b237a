import NIOCore

/// The stall and idle timeouts of one bridge (SPEC §2 rules 6c and 7), without I/O or a clock.
///
/// The handler samples both directions on one periodic timer and passes the samples in. The same timer
/// reports the bridge's byte counts to the metrics, so with `--metrics` it also runs, at least every
/// ``reportInterval``, while the bridge carries traffic, even with both timeouts off. Progress is
/// judged at the socket: a direction that holds data makes progress while the receiving peer takes
/// bytes (the kernel's count of acknowledged bytes grows), even if the proxy's own writes stay blocked
/// for a long time behind a slow reader.
struct BridgeTimeouts {
    /// What the handler sees of one direction at a sampling tick.
    struct Sample: Equatable {
        /// Bytes the proxy holds for this direction's destination (written to the channel, not yet to
        /// the socket).
        var held: Int
        /// A counter that grows whenever the destination peer takes bytes (its socket's acknowledged
        /// byte count); only compared with its previous value.
        var delivered: UInt64
    }

    /// What to do after a tick.
    enum Decision: Equatable {
        /// Sample again after this long.
        case sampleAgain(in: TimeAmount)
        /// Nothing to watch until traffic resumes: stop the timer.
        case stop
        /// End the bridge.
        case expire(CloseReason)
    }

    private let stallTimeout: TimeAmount?
    private let idleTimeout: TimeAmount?
    private let reportInterval: TimeAmount?
    private var lastTraffic: NIODeadline
    private var lastTrafficBytes: UInt64 = 0
    // Two fields, not an array: a bridge's timeouts cost no allocation of their own.
    private var upstreamProgress = DirectionProgress()
    private var downstreamProgress = DirectionProgress()

    private struct DirectionProgress {
        /// `nil` until the first sample, which is the baseline (a connecting socket's count starts at 1).
        var lastDelivered: UInt64? = nil
        /// When this direction was last seen holding nothing or delivering something.
        var lastProgress: NIODeadline? = nil

        /// Takes a sample.
        /// - Returns: whether the peer took bytes since the last sample (traffic, whether the proxy still
        ///   holds some or they all wait in the kernel's send queue), and, while the direction holds bytes,
        ///   since when it has made no progress.
        mutating func observe(_ sample: Sample, now: NIODeadline) -> (delivered: Bool, stalledSince: NIODeadline?) {
            let moved = self.lastDelivered.map { sample.delivered != $0 } ?? false
            self.lastDelivered = sample.delivered
            if sample.held == 0 || moved || self.lastProgress == nil {
                self.lastProgress = now
            }
            return (moved, sample.held > 0 ? self.lastProgress : nil)
        }
    }

    /// How often a bridge that carries traffic reports its byte counts when the metrics are on.
    static let metricsReportInterval = TimeAmount.seconds(1)

    /// - Parameters:
    ///   - stallTimeout: `--stall-timeout`, `nil` when off.
    ///   - idleTimeout: `--idle-timeout`, `nil` when off.
    ///   - reportInterval: with `--metrics`, the longest a busy bridge's byte counts may go unreported
    ///     (``metricsReportInterval``); `nil` without metrics.
    ///   - now: when the bridge started.
    init(stallTimeout: TimeAmount?, idleTimeout: TimeAmount?, reportInterval: TimeAmount? = nil, now: NIODeadline) {
        self.stallTimeout = stallTimeout
        self.idleTimeout = idleTimeout
        self.reportInterval = reportInterval
        self.lastTraffic = now
    }

    /// Whether a timeout is on or the metrics want byte counts as they go, so the bridge needs a timer.
    var isEnabled: Bool { self.timesOut || self.reportInterval != nil }

    /// How often to sample: an eighth of the shortest timeout, or the report interval if that is shorter.
    /// A stall or idle spell is seen at most an eighth of its timeout after it starts, and the tick that
    /// follows lands on its deadline, so a timeout fires between 1 and 1.125 times its length after the
    /// last progress.
    var samplingInterval: TimeAmount {
        // No array here: this runs on every tick of every bridge.
        let shortest: TimeAmount
        switch (self.stallTimeout, self.idleTimeout) {
        case (let stall?, let idle?): shortest = min(stall, idle)
        case (let stall?, nil): shortest = stall
        case (nil, let idle?): shortest = idle
        case (nil, nil): shortest = .seconds(1)
        }
        var interval = TimeAmount.nanoseconds(max(shortest.nanoseconds / 8, Self.minimumDelay.nanoseconds))
        if let reportInterval = self.reportInterval, reportInterval < interval || !self.timesOut {
            interval = reportInterval
        }
        return interval
    }

    private var timesOut: Bool { self.stallTimeout != nil || self.idleTimeout != nil }

    private static let minimumDelay = TimeAmount.milliseconds(5)

    /// A sampling tick.
    /// - Parameters:
    ///   - now: the time of the tick.
    ///   - trafficBytes: bytes read from both sides so far (any change counts as traffic).
    ///   - upstream: the client-to-server direction.
    ///   - downstream: the server-to-client direction.
    ///   - heldElsewhere: whether the proxy holds bytes outside the sockets' write buffers that will be
    ///     written later (chunks delayed by `--latency`): then the timer must not stop, or a stall after
    ///     their delivery would go unseen.
    /// - Returns: whether to keep sampling, stop, or end the bridge.
    mutating func tick(
        now: NIODeadline,
        trafficBytes: UInt64,
        upstream: Sample,
        downstream: Sample,
        heldElsewhere: Bool = false
    ) -> Decision {
        if trafficBytes != self.lastTrafficBytes {
            self.lastTrafficBytes = trafficBytes
            self.lastTraffic = now
        }
        let up = self.upstreamProgress.observe(upstream, now: now)
        let down = self.downstreamProgress.observe(downstream, now: now)
        // A peer taking bytes is traffic for the idle timeout: an upload the proxy has read in full but the
        // kernel still sends to a slow server is not idle, or its answer would be cut off. (Without an idle
        // timeout it is no reason to keep sampling: with nothing held, nothing can stall.)
        if self.idleTimeout != nil && (up.delivered || down.delivered) { self.lastTraffic = now }
        var nextDeadline: NIODeadline? = nil
        if let stallTimeout {
            for stalledSince in [up.stalledSince, down.stalledSince] {
                guard let stalledSince else { continue }
                if now - stalledSince >= stallTimeout {
                    return .expire(.stallTimeout)
                }
                nextDeadline = min(nextDeadline ?? stalledSince + stallTimeout, stalledSince + stallTimeout)
            }
        }
        if let idleTimeout {
            if now - self.lastTraffic >= idleTimeout {
                return .expire(.idleTimeout)
            }
            nextDeadline = min(nextDeadline ?? self.lastTraffic + idleTimeout, self.lastTraffic + idleTimeout)
        }
        // Without an idle timeout, a bridge that holds nothing and moved nothing needs no timer until
        // its next read.
        if self.idleTimeout == nil && upstream.held == 0 && downstream.held == 0 && !heldElsewhere
            && self.lastTraffic != now
        {
            return .stop
        }
        var delay = self.samplingInterval
        if let nextDeadline, nextDeadline - now < delay {
            delay = max(nextDeadline - now, Self.minimumDelay)
        }
        return .sampleAgain(in: delay)
    }

    /// The timer restarts after a stop: forget the old progress marks so a fresh stall is timed from now.
    mutating func restart(now: NIODeadline) {
        self.upstreamProgress.lastProgress = now
        self.downstreamProgress.lastProgress = now
    }
}
