import NIOCore

/// Connects a client to one of several targets: the pool's pick first; when a connect fails the target
/// is marked down and the next one is tried, at most once each and within `--connect-timeout` overall,
/// so no client sees a failure while a healthy target exists.
struct PooledServerConnector: ServerConnector {
    let pool: TargetPool

    var holdsHandshakeACK: Bool { true }

    func connect(
        on eventLoop: EventLoop,
        configuration: BridgeConfiguration,
        attempts: ConnectAttempts,
        initialize: @escaping @Sendable (Channel) throws -> Void
    ) -> EventLoopFuture<Channel> {
        let promise = eventLoop.makePromise(of: Channel.self)
        let deadline = eventLoop.now + configuration.connectTimeout
        let order = self.pool.order(now: eventLoop.now)
        self.attempt(order[...], deadline: deadline, lastError: nil, on: eventLoop, configuration, attempts, initialize, promise)
        return promise.futureResult
    }

    private func attempt(
        _ remaining: ArraySlice<Int>,
        deadline: NIODeadline,
        lastError: Error?,
        on eventLoop: EventLoop,
        _ configuration: BridgeConfiguration,
        _ attempts: ConnectAttempts,
        _ initialize: @escaping @Sendable (Channel) throws -> Void,
        _ promise: EventLoopPromise<Channel>
    ) {
        let timeLeft = deadline - eventLoop.now
        guard let index = remaining.first, timeLeft > .zero else {
            switch lastError {
            case ChannelError.connectTimeout?, nil:
                // The whole budget ran out, not only the last attempt's share of it.
                promise.fail(ChannelError.connectTimeout(configuration.connectTimeout))
            case let error?:
                promise.fail(error)
            }
            return
        }
        // An unreachable target (SYNs dropped) must not use up the whole budget: each target left gets an
        // equal share of the time left.
        var attemptConfiguration = configuration
        attemptConfiguration.connectTimeout = .nanoseconds(timeLeft.nanoseconds / Int64(remaining.count))
        let pool = self.pool
        TCPServerConnector(target: pool.connectTargets[index], holdsHandshakeACK: self.holdsHandshakeACK)
            .connect(on: eventLoop, configuration: attemptConfiguration, attempts: attempts, initialize: initialize)
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    pool.connected(index)
                    Self.attach(channel, to: pool, index)
                    promise.succeed(channel)
                case .failure(let error) where attempts.isCancelled:
                    // Given up by the bridge: says nothing about the target, and nothing more is tried.
                    promise.fail(error)
                case .failure(let error):
                    pool.connectFailed(index, error: error, now: eventLoop.now)
                    self.attempt(
                        remaining.dropFirst(), deadline: deadline, lastError: error, on: eventLoop,
                        configuration, attempts, initialize, promise
                    )
                }
            }
    }

    /// Tells the bridge on `channel` its target's metrics (for its bytes), and releases the target when the
    /// server connection really ends: when its bridge says so (a spliced bridge closes its NIO channel long
    /// before its socket), or when the channel closes if it has no bridge.
    private static func attach(_ channel: Channel, to pool: TargetPool, _ index: Int) {
        if channel.eventLoop.inEventLoop,
            let handler = try? channel.pipeline.syncOperations.handler(type: BridgeHandler.self)
        {
            handler.targetMetrics = pool.metrics(index)
            handler.whenConnectionEnded { pool.released(index) }
        } else {
            channel.closeFuture.whenComplete { _ in pool.released(index) }
        }
    }

    var targetDescription: String {
        self.pool.specs.map(\.endpoint.description).joined(separator: ",")
    }
}
