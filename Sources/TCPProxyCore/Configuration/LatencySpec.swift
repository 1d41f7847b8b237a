import NIOCore

/// `--latency MS[:JITTER_MS]`: a fixed delay per chunk plus up to `jitter` more.
public struct LatencySpec: Hashable, Sendable {
    /// The fixed delay.
    public var delay: TimeAmount
    /// The most extra delay, uniformly drawn per chunk.
    public var jitter: TimeAmount

    /// Parses `100` or `100:20` (milliseconds, whole or fractional, at most an hour each).
    public init?(parsing text: String) {
        let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
        func milliseconds(_ part: Substring) -> TimeAmount? {
            guard !part.isEmpty, part.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }),
                let value = Double(part), value.isFinite, value >= 0, value <= 3_600_000
            else { return nil }
            return .nanoseconds(Int64(value * 1_000_000))
        }
        guard let delay = milliseconds(parts[0]) else { return nil }
        var jitter = TimeAmount.zero
        if parts.count == 2 {
            guard let value = milliseconds(parts[1]) else { return nil }
            jitter = value
        }
        self.delay = delay
        self.jitter = jitter
    }
}
