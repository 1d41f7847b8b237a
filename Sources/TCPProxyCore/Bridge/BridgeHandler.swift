import NIOCore
import NIOExtras

/// The handler in each of a bridge's two channels: it reports events to its ``Bridge`` and writes what
/// the partner channel read.
///
/// It holds back `read()` while the partner cannot take more, which is all the back-pressure there is:
/// at most the partner's write buffer (the high-water mark) plus one read is held per direction.
final class BridgeHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let side: BridgeStateMachine.Side
    /// Set by the bridge right after both handlers exist; cleared by the bridge when it has ended (which
    /// breaks the bridge-handler reference cycle).
    var bridge: Bridge?
    private(set) var context: ChannelHandlerContext?

    /// A `read()` came while the partner could take no more; it is passed on when the partner can.
    private var readPaused = false
    /// Bytes were written to this channel since the last flush.
    private var flushNeeded = false
    /// This channel's peer sent EOF.
    private var inputClosed = false
    /// What waits for the connection's real end (see ``whenConnectionEnded(_:)``).
    private var endActions: [() -> Void] = []
    /// Server side, with several targets: the metrics of the one this connection went to.
    var targetMetrics: TargetMetrics?

    init(side: BridgeStateMachine.Side) {
        self.side = side
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if self.side == .client, context.channel.isActive {
            self.bridge?.clientActive(context.channel)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        // The server-side handler may be installed again: a failed connect to one target is followed by a
        // connect to the next, with this same handler.
        if self.context === context {
            self.context = nil
        }
        if self.side == .client {
            self.bridge?.clientHandlerRemoved()
        }
    }

    func channelActive(context: ChannelHandlerContext) {
        if self.side == .client {
            self.bridge?.clientActive(context.channel)
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.bridge?.received(self.unwrapInboundIn(data), from: self.side)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.bridge?.readComplete(from: self.side)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            self.bridge?.becameWritable(self.side)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case ChannelEvent.inputClosed:
            self.inputClosed = true
            self.bridge?.inputClosed(on: self.side)
        case ChannelEvent.outputClosed:
            self.bridge?.outputClosed(on: self.side)
        case is ChannelShouldQuiesceEvent:
            self.bridge?.quiesceRequested()
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        self.bridge?.errorCaught(on: self.side, error)
    }

    func read(context: ChannelHandlerContext) {
        if self.bridge?.mayRead(self.side) ?? true {
            context.read()
        } else {
            self.readPaused = true
        }
    }

    // MARK: Called by the bridge

    /// Writes bytes the partner read; they are flushed at the end of the partner's read burst.
    func forward(_ buffer: ByteBuffer) {
        guard let context else { return }
        context.write(self.wrapOutboundOut(buffer), promise: nil)
        self.flushNeeded = true
    }

    func flushIfNeeded() {
        guard self.flushNeeded, let context else { return }
        self.flushNeeded = false
        context.flush()
    }

    /// Whether NIO holds no unwritten bytes for this channel (`false` when it cannot tell).
    var holdsNothing: Bool {
        guard let channel = self.context?.channel,
            let held = try? channel.syncOptions?.getOption(.bufferedWritableBytes)
        else { return false }
        return held == 0
    }

    /// An empty write, flushed: it completes once everything written to this channel before it is
    /// written to the socket. `nil` without a channel.
    func writeBarrier() -> EventLoopFuture<Void>? {
        guard let context else { return nil }
        self.flushNeeded = false
        return context.writeAndFlush(self.wrapOutboundOut(ByteBuffer()))
    }

    /// Runs `action` once this side's connection has ended for good: its socket closed by NIO, or by the
    /// splice engine after a handover (a channel's `closeFuture` completes at the handover already).
    /// Target pools count open connections per target this way.
    func whenConnectionEnded(_ action: @escaping () -> Void) {
        self.endActions.append(action)
    }

    /// The connection has ended for good: run what waits for it.
    func connectionEnded() {
        let actions = self.endActions
        self.endActions = []
        for action in actions { action() }
    }

    /// Passes on a `read()` that was held back, if the bridge now allows it.
    func resumeReadingIfPaused() {
        guard self.readPaused, let context, self.bridge?.mayRead(self.side) ?? false else { return }
        self.readPaused = false
        context.read()
    }

    /// Writes what is held for this channel, then shuts down its output (`SHUT_WR`).
    ///
    /// NIO turns an output shutdown into a full close, dropping unwritten bytes, when the input is
    /// already shut; so in that case the shutdown waits for the last write to complete.
    func shutdownOutput() {
        guard let context else { return }
        self.flushIfNeeded()
        // A write that fails behind the shutdown (the peer reset) ends the bridge as a reset; NIO closes
        // such a channel without an `errorCaught`.
        let side = self.side
        if self.inputClosed {
            let loopBoundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(self.wrapOutboundOut(ByteBuffer()))
                .assumeIsolated()
                .whenComplete { result in
                    switch result {
                    case .success: loopBoundContext.value.close(mode: .output, promise: nil)
                    case .failure(let error): self.bridge?.errorCaught(on: side, error)
                    }
                }
        } else {
            let promise = context.eventLoop.makePromise(of: Void.self)
            context.close(mode: .output, promise: promise)
            promise.futureResult.assumeIsolated().whenFailure { error in
                self.bridge?.errorCaught(on: side, error)
            }
        }
    }

    /// What this channel holds unwritten, and what its peer has acknowledged (for the stall timeout).
    func sample() -> BridgeTimeouts.Sample {
        guard let channel = self.context?.channel,
            let held = try? channel.syncOptions?.getOption(.bufferedWritableBytes)
        else { return .init(held: 0, delivered: 0) }
        return .init(held: held, delivered: LinuxSocketOptions.bytesAcknowledged(channel) ?? 0)
    }
}

@available(*, unavailable)
extension BridgeHandler: Sendable {}

/// The channel options both sockets of a bridge get.
enum BridgeChannelOptions {
    /// NIO's own defaults: write-buffer water marks 32 KiB / 64 KiB, reads of up to 64 KiB. With the
    /// default high-water mark nothing needs setting, which spares two option calls per socket.
    static let defaultHighWaterMark = 64 * 1024

    /// Reads start small and grow with the traffic (NIO's adaptive sizes, up to 64 KiB after two full reads).
    /// NIO keeps the last receive buffer of every channel for reuse, so the first size is what an idle
    /// bridge holds: 2 × 512 bytes instead of NIO's default 2 × 2 KiB.
    static let receiveAllocator = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 64 * 1024)

    /// Turns on half-closure (an EOF becomes `ChannelEvent.inputClosed` instead of a close), and sets the
    /// write-buffer bounds and a read size that starts small (``receiveAllocator``) and stays within the
    /// high-water mark and, under a rate limit, within the rate's burst (so throttled reads come smoothly,
    /// not in lumps).
    ///
    /// Set here, in the channel initializer, rather than as a bootstrap option: a bootstrap applies its
    /// options through a chain of futures, several allocations per option and connection.
    /// - Parameters:
    ///   - configuration: the bridge options.
    ///   - channel: the socket, before it is active.
    ///   - direction: the direction of the data read from this socket.
    static func apply(_ configuration: BridgeConfiguration, to channel: Channel, reading direction: Direction) throws {
        guard let options = channel.syncOptions else {
            // Every bridge socket is a NIO socket channel, which has synchronous options; this is a fallback.
            _ = channel.setOption(.allowRemoteHalfClosure, value: true)
            return
        }
        try options.setOption(.allowRemoteHalfClosure, value: true)
        let high = configuration.highWaterMark
        let rateLimit = BridgeShaping.readLimit(configuration, direction)
        if high != Self.defaultHighWaterMark {
            try options.setOption(.writeBufferWaterMark, value: .init(low: max(1, high / 2), high: high))
        }
        if rateLimit != nil {
            // One read per readiness event: the rate pauses reading after a read, and NIO would otherwise go on
            // with its further reads of the same event before the pause takes hold, several bursts at once.
            try options.setOption(.maxMessagesPerRead, value: 1)
        }
        let maximumRead = min(high, rateLimit ?? Int.max, Self.defaultHighWaterMark)
        if maximumRead < Self.defaultHighWaterMark {
            // Reads of at least 1 KiB, except under a rate whose burst is smaller (down to 64 bytes).
            let size = (rateLimit ?? Int.max) < 1024 ? maximumRead : max(1024, maximumRead)
            try options.setOption(
                .recvAllocator,
                value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: min(512, size), maximum: size)
            )
        } else {
            try options.setOption(.recvAllocator, value: Self.receiveAllocator)
        }
    }
}
