import NIOCore
import NIOExtras

/// The handler in a stream's local socket (the client at the mux, the server at the demux): it reports
/// events to its ``MuxStream``, writes what arrived through the tunnel, and holds back `read()` while the
/// stream may not send (no credit, the tunnel is not writable, or the stream is not open).
final class MuxStreamHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Set by the stream; cleared when the stream has ended (breaking the reference cycle).
    var stream: MuxStream?
    private(set) var context: ChannelHandlerContext?
    /// A `read()` came while the stream could send no more; passed on when it can.
    private var readPaused = false
    /// This socket's peer sent EOF.
    private var inputClosed = false

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.stream?.localRead(self.unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.stream?.localReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case ChannelEvent.inputClosed:
            self.inputClosed = true
            self.stream?.localInputClosed()
        case ChannelEvent.outputClosed:
            self.stream?.localOutputClosed()
        case is ChannelShouldQuiesceEvent:
            self.stream?.quiesceRequested()
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        self.stream?.localError(error)
    }

    func read(context: ChannelHandlerContext) {
        if self.stream?.mayReadLocal() ?? true {
            context.read()
        } else {
            self.readPaused = true
        }
    }

    // MARK: Called by the stream

    /// Passes on a held-back `read()`, if the stream now allows it.
    func resumeReadingIfPaused() {
        guard self.readPaused, let context, self.stream?.mayReadLocal() ?? false else { return }
        self.readPaused = false
        context.read()
    }

    /// Writes bytes that arrived through the tunnel (flushed by ``flush(reporting:)``).
    func write(_ buffer: ByteBuffer) {
        self.context?.write(self.wrapOutboundOut(buffer), promise: nil)
    }

    /// Flushes, and calls `delivered` once everything written so far has gone to the socket.
    func flush(reporting delivered: @escaping (Bool) -> Void) {
        guard let context else { return }
        // An empty write completes once every write before it has: one promise per burst, not per chunk.
        let promise = context.eventLoop.makePromise(of: Void.self)
        promise.futureResult.assumeIsolated().whenComplete { result in
            if case .success = result { delivered(true) } else { delivered(false) }
        }
        context.writeAndFlush(self.wrapOutboundOut(ByteBuffer()), promise: promise)
    }

    /// Writes what is held, then shuts down this socket's output (`SHUT_WR`).
    ///
    /// NIO turns an output shutdown into a full close, dropping unwritten bytes, when the input is already
    /// shut; so in that case the shutdown waits for the last write to complete.
    func shutdownOutput() {
        guard let context else { return }
        if self.inputClosed {
            let loopBoundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(self.wrapOutboundOut(ByteBuffer()))
                .assumeIsolated()
                .whenComplete { _ in loopBoundContext.value.close(mode: .output, promise: nil) }
        } else {
            context.flush()
            context.close(mode: .output, promise: nil)
        }
    }

    /// What this socket holds unwritten, and what its peer has acknowledged (for the stall timeout).
    func sample() -> BridgeTimeouts.Sample {
        guard let channel = self.context?.channel,
            let held = try? channel.syncOptions?.getOption(.bufferedWritableBytes)
        else { return .init(held: 0, delivered: 0) }
        // Asked even when nothing is held: bytes the peer takes from the kernel's send queue are traffic
        // for the idle timeout.
        return .init(held: held, delivered: LinuxSocketOptions.bytesAcknowledged(channel) ?? 0)
    }
}

@available(*, unavailable)
extension MuxStreamHandler: Sendable {}

/// How a stream's local socket (a client at the mux, a server at the demux) is read: in one read per
/// wakeup, of up to as many bytes as a bridge takes in the reads of one wakeup.
///
/// A bridge reads a socket up to four times per wakeup (NIO's `maxMessagesPerRead`), each read at most
/// `min(64 KiB, high-water mark)`. A stream does the same work per read as a bridge and then some (each
/// read becomes DATA frames on the shared tunnel, whose single event loop is the mux's bottleneck), so it
/// takes the same bytes in one read: a quarter of the read calls and `channelRead` events, and the same
/// bound on what one wakeup can buffer (measured: 14% less CPU per GB at the mux; docs/BENCHMARKS.md).
enum MuxStreamChannelOptions {
    /// Sets the reads of `channel`, after ``BridgeChannelOptions/apply(_:to:reading:)``.
    /// - Parameters:
    ///   - configuration: the stream's bridge options (its high-water mark).
    ///   - channel: the local socket, before it reads.
    static func apply(_ configuration: BridgeConfiguration, to channel: Channel) throws {
        guard let options = channel.syncOptions else { return }
        let burst = Self.maximumRead(
            highWaterMark: configuration.highWaterMark,
            readsPerWakeup: Int(try options.getOption(.maxMessagesPerRead))
        )
        try options.setOption(
            .recvAllocator,
            value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: min(2048, burst), maximum: burst)
        )
        try options.setOption(.maxMessagesPerRead, value: 1)
    }

    /// The most one read takes: what a bridge's reads of one wakeup take at most.
    /// - Parameters:
    ///   - highWaterMark: `--high-water-mark`.
    ///   - readsPerWakeup: NIO's `maxMessagesPerRead` for the socket (4 unless changed).
    static func maximumRead(highWaterMark: Int, readsPerWakeup: Int) -> Int {
        max(1, readsPerWakeup) * max(1024, min(highWaterMark, BridgeChannelOptions.defaultHighWaterMark))
    }
}
