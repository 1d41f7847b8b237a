import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Active health checks (`--health-interval`): every interval, a TCP connect to each target, closed at
/// once. `rise` successes in a row bring a down target back, `fall` failures take an up one down.
final class HealthChecker: Sendable {
    private let pool: TargetPool
    private let interval: TimeAmount
    private let group: EventLoopGroup
    private let task: NIOLockedValueBoxRepeatedTask

    init(pool: TargetPool, interval: TimeAmount, group: EventLoopGroup) {
        self.pool = pool
        self.interval = interval
        self.group = group
        self.task = NIOLockedValueBoxRepeatedTask()
    }

    /// Starts checking; the first round runs at once.
    func start() {
        let loop = self.group.next()
        let repeated = loop.scheduleRepeatedTask(initialDelay: .zero, delay: self.interval) { [self] _ in
            self.checkAll(on: loop)
        }
        self.task.set(repeated)
    }

    func stop() {
        self.task.cancel()
    }

    private func checkAll(on loop: EventLoop) {
        let timeout = min(self.interval, .seconds(2))
        for index in self.pool.connectTargets.indices {
            let pool = self.pool
            let bootstrap = ClientBootstrap(group: loop).connectTimeout(timeout)
            let connected: EventLoopFuture<Channel>
            switch pool.connectTargets[index] {
            case .address(let address): connected = bootstrap.connect(to: address)
            case .name(let host, let port): connected = bootstrap.connect(host: host, port: port)
            }
            connected.whenComplete { result in
                switch result {
                case .success(let channel):
                    channel.close(promise: nil)
                    pool.checked(index, healthy: true)
                case .failure:
                    pool.checked(index, healthy: false)
                }
            }
        }
    }
}

/// A repeated task that can be set once and cancelled from any thread.
final class NIOLockedValueBoxRepeatedTask: Sendable {
    private let box = NIOLockedValueBox<RepeatedTask?>(nil)

    func set(_ task: RepeatedTask) {
        self.box.withLockedValue { $0 = task }
    }

    func cancel() {
        self.box.withLockedValue { $0?.cancel() }
    }
}
