import Logging
import NIOCore
import NIOEmbedded

@testable import TCPProxyCore

/// A bridge between two `EmbeddedChannel`s on one `EmbeddedEventLoop`, with verbs for tests:
/// `activate()`, `connect()`, `receive(_:from:)`, `advanceTime(by:)`, `written(to:)`.
final class BridgeHarness {
    typealias Side = BridgeStateMachine.Side

    let loop = EmbeddedEventLoop()
    let client: EmbeddedChannel
    let connector: EmbeddedConnector
    let clientRecorder = ChannelRecorder()

    init(configuration: BridgeConfiguration = .init()) throws {
        let box = ReasonBox()
        self.client = EmbeddedChannel(loop: self.loop)
        self.connector = EmbeddedConnector(loop: self.loop)
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let bridge = Bridge(
            id: 1,
            clientChannel: self.client,
            connector: self.connector,
            configuration: configuration,
            logger: logger,
            hooks: .init(finished: { reason in box.reasons.append(reason) })
        )
        try self.client.pipeline.syncOperations.addHandler(self.clientRecorder)
        try self.client.pipeline.syncOperations.addHandler(bridge.clientChannelHandler)
        self.reasons = box
    }

    private let reasons: ReasonBox
    /// The reasons the bridge reported when it ended (at most one).
    var finishedReasons: [CloseReason] { self.reasons.reasons }

    var server: EmbeddedChannel { self.connector.channel! }
    var serverRecorder: ChannelRecorder { self.connector.recorder }

    /// The client connects: the bridge starts dialling the server.
    func activate() throws {
        try self.client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 40000)).wait()
        self.settle()
    }

    /// The server connection comes up.
    func connect() throws {
        try self.connector.succeed()
        self.settle()
    }

    /// The server connection fails.
    func failConnect(_ error: Error) {
        self.connector.fail(error)
        self.settle()
    }

    /// Runs what the loop has queued (`EmbeddedChannel` completes `closeFuture` there).
    func settle() {
        self.loop.run()
    }

    /// An error (a reset) on `side`.
    func error(on side: Side) {
        (side == .client ? self.client : self.server).pipeline.fireErrorCaught(IOError(errnoCode: 104, reason: "read"))
        self.settle()
    }

    /// `side`'s socket closes.
    func close(_ side: Side) {
        (side == .client ? self.client : self.server).close(promise: nil)
        self.settle()
    }

    /// Bytes arrive from one side, followed by the end of a read burst.
    func receive(_ text: String, from side: Side) throws {
        let channel = side == .client ? self.client : self.server
        try channel.writeInbound(ByteBuffer(string: text))
        channel.pipeline.fireChannelReadComplete()
        self.settle()
    }

    /// The peer on `side` sends EOF. As NIO does for a real socket, EOF on a socket whose output is
    /// already shut closes it outright, with no `inputClosed` event.
    func inputClosed(on side: Side) {
        let channel = side == .client ? self.client : self.server
        let recorder = side == .client ? self.clientRecorder : self.serverRecorder
        if recorder.outputShutdowns > 0 {
            channel.close(promise: nil)
        } else {
            channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        }
        self.settle()
    }

    /// Bytes arrive from `side` and are written to its partner, but the partner's socket takes none of
    /// them: they stay in its write buffer (in `EmbeddedChannel`, an unflushed write).
    func receiveButHold(_ text: String, from side: Side) {
        let channel = side == .client ? self.client : self.server
        channel.pipeline.fireChannelRead(ByteBuffer(string: text))
    }

    /// Everything written to `side` so far, as text.
    func written(to side: Side) throws -> String {
        let channel = side == .client ? self.client : self.server
        var text = ""
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) {
            text += String(buffer: buffer)
        }
        return text
    }

    /// Whether a `read()` issued on `side` now reaches the socket.
    func readReaches(_ side: Side) -> Bool {
        let recorder = side == .client ? self.clientRecorder : self.serverRecorder
        let before = recorder.reads
        (side == .client ? self.client : self.server).read()
        return recorder.reads > before
    }

    /// Makes `side` unwritable or writable again, as its write buffer crosses the water marks.
    func setWritable(_ side: Side, _ writable: Bool) {
        let channel = side == .client ? self.client : self.server
        channel.isWritable = writable
        channel.pipeline.fireChannelWritabilityChanged()
    }

    func advanceTime(by amount: TimeAmount) {
        self.loop.advanceTime(by: amount)
    }
}

/// Hands out an `EmbeddedChannel` as the server connection and lets the test decide when it connects.
final class EmbeddedConnector: ServerConnector, @unchecked Sendable {
    let loop: EmbeddedEventLoop
    var channel: EmbeddedChannel?
    let recorder = ChannelRecorder()
    private var promise: EventLoopPromise<Channel>?

    init(loop: EmbeddedEventLoop) {
        self.loop = loop
    }

    var targetDescription: String { "test-server:1" }

    func connect(
        on eventLoop: EventLoop,
        configuration: BridgeConfiguration,
        attempts: ConnectAttempts,
        initialize: @escaping @Sendable (Channel) throws -> Void
    ) -> EventLoopFuture<Channel> {
        let channel = EmbeddedChannel(loop: self.loop)
        try! attempts.started(channel)
        try! channel.pipeline.syncOperations.addHandler(self.recorder)
        try! initialize(channel)
        self.channel = channel
        let promise = eventLoop.makePromise(of: Channel.self)
        self.promise = promise
        // As with NIO's sockets: closing a channel whose connect is pending fails that connect.
        channel.closeFuture.whenComplete { _ in promise.fail(ChannelError.ioOnClosedChannel) }
        return promise.futureResult
    }

    func succeed() throws {
        try self.channel!.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        self.promise!.succeed(self.channel!)
    }

    func fail(_ error: Error) {
        self.promise!.fail(error)
    }
}

/// Sits at the head of a pipeline and records what the bridge asks of the socket: `read()` calls and
/// output shutdowns. `EmbeddedChannel` would turn a half-close into a full close, so this one keeps the
/// channel open and reports `outputClosed` as NIO does for a real socket.
final class ChannelRecorder: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer

    private(set) var reads = 0
    private(set) var outputShutdowns = 0
    private(set) var fullCloses = 0

    func read(context: ChannelHandlerContext) {
        self.reads += 1
        context.read()
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        switch mode {
        case .output:
            self.outputShutdowns += 1
            promise?.succeed(())
            context.fireUserInboundEventTriggered(ChannelEvent.outputClosed)
        default:
            self.fullCloses += 1
            context.close(mode: mode, promise: promise)
        }
    }
}

/// Collects what the bridge's `finished` hook reports.
final class ReasonBox: @unchecked Sendable {
    var reasons: [CloseReason] = []
}
