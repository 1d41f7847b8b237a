/// Hands a bridge's byte counts to the metrics as deltas: at each timeout sample and when the bridge
/// ends, never per chunk, so the data path only bumps two plain counters.
struct ByteCountReporter {
    private var reportedUpstream: UInt64 = 0
    private var reportedDownstream: UInt64 = 0
    /// The bridge's target among several (`forward` with a target pool), once connected: it gets the
    /// same deltas.
    var target: TargetMetrics?

    /// Adds what moved since the last report.
    /// - Parameters:
    ///   - upstream: bytes read from the client so far.
    ///   - downstream: bytes read from the server so far.
    ///   - metrics: where they go; nothing happens without metrics.
    mutating func report(upstream: UInt64, downstream: UInt64, to metrics: ProxyMetrics?) {
        guard let metrics else { return }
        let up = upstream &- self.reportedUpstream
        let down = downstream &- self.reportedDownstream
        guard up > 0 || down > 0 else { return }
        metrics.addBytes(upstream: up, downstream: down)
        self.target?.addBytes(upstream: up, downstream: down)
        self.reportedUpstream = upstream
        self.reportedDownstream = downstream
    }
}
