import Logging
import NIOCore

/// `--accept-proxy-protocol`: the first handler of each client, which reads the PROXY header (v1 or v2)
/// before anything else, within a time limit and a size limit. A valid header hands the client on with
/// the addresses it carries; a missing or malformed one closes the connection with a log line.
final class ProxyHeaderReceiver: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    /// What happens next.
    struct Outcome {
        /// Called with the header when it has arrived, before the handler removes itself. It installs
        /// what follows (a bridge), or returns `false` to close the client (e.g. `--allow` refuses the
        /// address the header carries).
        var received: (_ header: ProxyHeader, _ channel: Channel) -> Bool
        /// Called once if the client never becomes a bridge (bad header, timeout, early close).
        var abandoned: () -> Void
    }

    private let timeout: TimeAmount
    private let logger: Logger
    private let metrics: ProxyMetrics?
    private let outcome: Outcome
    private var buffered: ByteBuffer?
    private var timer: Scheduled<Void>?
    private var finished = false

    init(timeout: TimeAmount, logger: Logger, metrics: ProxyMetrics?, outcome: Outcome) {
        self.timeout = timeout
        self.logger = logger
        self.metrics = metrics
        self.outcome = outcome
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        self.timer = context.eventLoop.assumeIsolated().scheduleTask(in: self.timeout) {
            self.fail(loopBound.value, reason: "no PROXY header within \(self.timeout)")
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.timer?.cancel()
        // Removed without a header or a close (the channel never became active): give the slot back.
        if !self.finished {
            self.finished = true
            self.outcome.abandoned()
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.finished else { return }
        var incoming = self.unwrapInboundIn(data)
        if self.buffered == nil {
            self.buffered = incoming
        } else {
            self.buffered!.writeBuffer(&incoming)
        }
        do {
            guard let header = try self.buffered!.readProxyHeader() else { return }
            self.finished = true
            self.timer?.cancel()
            guard self.outcome.received(header, context.channel) else {
                self.outcome.abandoned()
                context.close(promise: nil)
                return
            }
            let rest = self.buffered!
            self.buffered = nil
            if rest.readableBytes > 0 {
                context.fireChannelRead(self.wrapInboundOut(rest))
                context.fireChannelReadComplete()
            }
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        } catch {
            self.fail(context, reason: "\(error)")
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event, !self.finished {
            self.fail(context, reason: "connection closed before the PROXY header")
            return
        }
        if event is ChannelShouldQuiesceEvent, !self.finished {
            // The listener drains: this client is no bridge yet, and none is opened now (a SOCKS request
            // that completes during a drain is refused too), so it goes at once rather than at the end of
            // its header time.
            self.fail(context, reason: "the proxy is shutting down", closeReason: .drainTimeout)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !self.finished {
            self.finished = true
            self.timer?.cancel()
            self.outcome.abandoned()
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        self.fail(context, reason: "\(error)")
    }

    private func fail(_ context: ChannelHandlerContext, reason: String, closeReason: CloseReason = .badProxyHeader) {
        guard !self.finished else { return }
        self.finished = true
        self.timer?.cancel()
        self.metrics?.rejected(closeReason)
        self.logger.info(
            "connection rejected",
            metadata: [
                "client.address": "\(context.channel.remoteAddress.logDescription)", "close.reason": "\(closeReason)",
                "error": "\(reason)",
            ]
        )
        self.outcome.abandoned()
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension ProxyHeaderReceiver: Sendable {}
