import CoreMetrics
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// The targets of a `forward` listener, shared by all its event loops: which to try for a client, and
/// what is known of each (up or down, open bridges). Every state change is logged and shows in the
/// per-target metrics.
final class TargetPool: Sendable {
    let specs: [TargetSpec]
    let connectTargets: [ConnectTarget]
    private let balancer: NIOLockedValueBox<TargetBalancer>
    private let logger: Logger
    private let metrics: [TargetMetrics]?

    /// - Parameters:
    ///   - specs: the targets.
    ///   - algorithm: `--balance`.
    ///   - healthChecked: whether active health checks decide when a down target is back; otherwise a
    ///     target that failed a connect gets another chance after `retryAfter`.
    ///   - listener: the listener's name, for metrics.
    ///   - factory: where per-target metrics go, if `--metrics` is on.
    init(
        specs: [TargetSpec],
        algorithm: BalanceAlgorithm,
        healthChecked: Bool,
        retryAfter: TimeAmount = .seconds(5),
        logger: Logger,
        listener: String,
        factory: (any MetricsFactory)?
    ) {
        self.specs = specs
        self.connectTargets = specs.map { ConnectTarget($0.endpoint) }
        self.balancer = NIOLockedValueBox(
            TargetBalancer(
                weights: specs.map(\.weight),
                algorithm: algorithm,
                retryAfter: healthChecked ? nil : retryAfter
            )
        )
        self.logger = logger
        self.metrics = factory.map { factory in
            specs.map { TargetMetrics(listener: listener, target: $0.endpoint.description, factory: factory) }
        }
        self.metrics?.forEach { $0.setUp(true) }
    }

    /// The order to try targets in for one client.
    func order(now: NIODeadline) -> [Int] {
        let (order, changes) = self.balancer.withLockedValue { $0.order(now: now) }
        self.report(changes, why: "retry")
        return order
    }

    /// The metrics of target `index`, if `--metrics` is on.
    func metrics(_ index: Int) -> TargetMetrics? {
        self.metrics?[index]
    }

    func connected(_ index: Int) {
        let change = self.balancer.withLockedValue { $0.connected(index) }
        self.metrics?[index].connected()
        self.report(change.map { [$0] } ?? [], why: "connect succeeded")
    }

    func released(_ index: Int) {
        self.balancer.withLockedValue { $0.released(index) }
        self.metrics?[index].released()
    }

    func connectFailed(_ index: Int, error: Error, now: NIODeadline) {
        let change = self.balancer.withLockedValue { $0.connectFailed(index, now: now) }
        self.metrics?[index].connectFailed()
        self.logger.debug(
            "target connect failed",
            metadata: ["target": "\(self.specs[index].endpoint)", "error": "\(SystemErrorText.describe(error))"]
        )
        self.report(change.map { [$0] } ?? [], why: "connect failed")
    }

    func checked(_ index: Int, healthy: Bool) {
        let change = self.balancer.withLockedValue { $0.checked(index, healthy: healthy) }
        self.report(change.map { [$0] } ?? [], why: "health check")
    }

    /// Whether `index` is up now (for tests and logs).
    func isUp(_ index: Int) -> Bool {
        self.balancer.withLockedValue { $0.targets[index].isUp }
    }

    private func report(_ changes: [TargetBalancer.Change], why: String) {
        for change in changes {
            switch change {
            case .up(let index):
                self.metrics?[index].setUp(true)
                self.logger.notice("target up", metadata: ["target": "\(self.specs[index].endpoint)", "reason": "\(why)"])
            case .down(let index):
                self.metrics?[index].setUp(false)
                self.logger.warning("target down", metadata: ["target": "\(self.specs[index].endpoint)", "reason": "\(why)"])
            }
        }
    }
}
