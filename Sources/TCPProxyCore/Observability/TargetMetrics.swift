import CoreMetrics

/// The per-target metrics of a `forward` listener with several targets: up or down, open bridges,
/// connects, connect failures and bytes. Labelled `listener` and `target`.
public final class TargetMetrics: Sendable {
    /// `tcpproxy_target_up`: 1 while the target takes clients first, 0 while it is down.
    static let upName = "tcpproxy_target_up"
    /// `tcpproxy_target_bridges_active`: bridges open to the target.
    static let activeName = "tcpproxy_target_bridges_active"
    /// `tcpproxy_target_connects_total`: server connections made to the target.
    static let connectsName = "tcpproxy_target_connects_total"
    /// `tcpproxy_target_connect_failures_total`: connects to the target that failed.
    static let failuresName = "tcpproxy_target_connect_failures_total"
    /// `tcpproxy_target_bytes_total{direction}`: bytes of the bridges to the target, as `tcpproxy_bytes_total`.
    static let bytesName = "tcpproxy_target_bytes_total"

    private let up: CoreMetrics.Gauge
    private let active: CoreMetrics.Meter
    private let connects: CoreMetrics.Counter
    private let failures: CoreMetrics.Counter
    private let bytesUpstream: CoreMetrics.Counter
    private let bytesDownstream: CoreMetrics.Counter

    init(listener: String, target: String, factory: any MetricsFactory) {
        let dimensions = [("listener", listener), ("target", target)]
        self.up = CoreMetrics.Gauge(label: Self.upName, dimensions: dimensions, factory: factory)
        self.active = CoreMetrics.Meter(label: Self.activeName, dimensions: dimensions, factory: factory)
        self.connects = CoreMetrics.Counter(label: Self.connectsName, dimensions: dimensions, factory: factory)
        self.failures = CoreMetrics.Counter(label: Self.failuresName, dimensions: dimensions, factory: factory)
        self.bytesUpstream = CoreMetrics.Counter(label: Self.bytesName, dimensions: dimensions + [("direction", "upstream")], factory: factory)
        self.bytesDownstream = CoreMetrics.Counter(
            label: Self.bytesName, dimensions: dimensions + [("direction", "downstream")], factory: factory
        )
    }

    func setUp(_ isUp: Bool) { self.up.record(isUp ? 1 : 0) }

    /// Removes the `tcpproxy_target_up` series of a target that is no longer configured (a `run` reload took
    /// it or its listener away): its last state would otherwise be reported as current for the process's
    /// life. The totals stay, as a stopped listener's do; a later listener with the pair makes the series anew.
    public static func forgetUp(listener: String, target: String, factory: any MetricsFactory) {
        // The factory hands back the series already registered under this name and these labels.
        CoreMetrics.Gauge(label: Self.upName, dimensions: [("listener", listener), ("target", target)], factory: factory).destroy()
    }
    func connected() {
        self.connects.increment()
        self.active.increment()
    }
    func released() { self.active.decrement() }
    func connectFailed() { self.failures.increment() }
    func addBytes(upstream: UInt64, downstream: UInt64) {
        if upstream > 0 { self.bytesUpstream.increment(by: Int64(truncatingIfNeeded: upstream)) }
        if downstream > 0 { self.bytesDownstream.increment(by: Int64(truncatingIfNeeded: downstream)) }
    }
}
