import Logging
import NIOCore
import NIOExtras

/// The drain every listening service (forward/socks/transparent, mux, demux) runs once a graceful shutdown
/// begins (SPEC: stop accepting, let open bridges finish for up to `--drain-timeout`).
enum ListenerDrain {
    /// Logs the drain, stops accepting and tells every open client channel to quiesce, then waits until no
    /// bridge or stream is left. Each ends itself by its drain or stall timeout, so the final wait is only
    /// bounded here (drain + stall timeouts + 5 s) in case one does not.
    /// - Parameters:
    ///   - quiescing: the service's quiescing helper.
    ///   - group: the service's event loops.
    ///   - bridge: the drain and stall timeouts.
    ///   - logger: where "draining" goes.
    ///   - active: the bridges or streams open right now.
    ///   - beforeQuiescing: what must hear of the drain before the channels do (the splice engine).
    static func run(
        quiescing: ServerQuiescingHelper,
        group: EventLoopGroup,
        bridge: BridgeConfiguration,
        logger: Logger,
        active: () -> Int,
        beforeQuiescing: () -> Void = {}
    ) async {
        await Self.run(bridge: bridge, logger: logger, active: active) {
            beforeQuiescing()
            let drained = group.next().makePromise(of: Void.self)
            quiescing.initiateShutdown(promise: drained)
            try? await drained.futureResult.get()
        }
    }

    /// The same drain for a listener that stops accepting its own way (the direct engine's).
    /// - Parameter stopAccepting: closes the listening socket and starts every open bridge's drain.
    static func run(
        bridge: BridgeConfiguration,
        logger: Logger,
        active: () -> Int,
        stopAccepting: () async -> Void
    ) async {
        logger.notice(
            "draining",
            metadata: [
                "bridges.active": "\(active())",
                "drain.timeout": "\(bridge.drainTimeout.map { "\($0)" } ?? "none")",
            ]
        )
        await stopAccepting()
        // The quiescing helper watches client sockets only: a bridge may still be writing its last bytes to a
        // slow server, a stream its client's last bytes as credit comes.
        let limit = (bridge.drainTimeout ?? .zero) + (bridge.stallTimeout ?? .zero) + .seconds(5)
        let deadline = NIODeadline.now() + limit
        while active() > 0, NIODeadline.now() < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
    }
}
