import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle

/// `--metrics HOST:PORT`: a small HTTP/1.1 server with the Prometheus text exposition of `registry` at
/// `/metrics` (GET and HEAD). Any other path is `404`, any other method on `/metrics` is `405`.
///
/// A `Service`: it runs until graceful shutdown (or cancellation), then closes its socket, lets a scrape in
/// progress finish, and closes idle keep-alive connections.
public final class MetricsEndpoint: Service, Sendable {
    /// How long shutdown waits for a scrape in progress before returning anyway.
    static let shutdownGrace: TimeAmount = .seconds(2)
    /// How long a connection may go without reads or writes (a request cut off halfway, or a kept-alive
    /// connection between scrapes) before it is closed, so stalled clients cannot hold descriptors for ever.
    public static let idleTimeout: TimeAmount = .seconds(30)

    private let endpoint: Endpoint
    private let registry: PrometheusCollectorRegistry
    private let group: EventLoopGroup
    private let logger: Logger
    private let idleTimeout: TimeAmount
    private let boundAddress = NIOLockedValueBox<SocketAddress?>(nil)
    /// The socket ``bind()`` made ahead of ``run()``, and its quiescing helper.
    private let bound = NIOLockedValueBox<(channel: Channel, quiescing: ServerQuiescingHelper)?>(nil)

    /// - Parameters:
    ///   - endpoint: where to listen (port 0 for an ephemeral port).
    ///   - registry: the registry whose metrics are served.
    ///   - group: the event loops to run on.
    ///   - logger: for `metrics listening on ...` and errors.
    ///   - idleTimeout: how long a connection may send nothing before it is closed.
    public init(
        endpoint: Endpoint,
        registry: PrometheusCollectorRegistry,
        group: EventLoopGroup,
        logger: Logger,
        idleTimeout: TimeAmount = MetricsEndpoint.idleTimeout
    ) {
        self.endpoint = endpoint
        self.registry = registry
        self.group = group
        self.logger = logger
        self.idleTimeout = idleTimeout
    }

    /// The address the socket is bound to, once it is (with the real port when port 0 was asked for).
    public var localAddress: SocketAddress? { self.boundAddress.withLockedValue { $0 } }

    /// Binds the socket now, before the listeners start, so that a metrics address in use stops the
    /// process before any `listening on` line says it is ready. ``run()`` then serves on it.
    /// - Throws: ``ListenerError`` when the address cannot be bound.
    public func bind() async throws {
        _ = try await self.boundSocket()
    }

    /// Binds (unless ``bind()`` did), serves until graceful shutdown or cancellation, then closes.
    /// - Throws: ``ListenerError`` when the address cannot be bound.
    public func run() async throws {
        let (channel, quiescing) = try await self.boundSocket()
        let address = channel.localAddress
        self.logger.logReady("metrics served at \(address.map(\.logDescription) ?? self.endpoint.description)")
        // Published after the line: whoever sees the address can also find the line.
        self.boundAddress.withLockedValue { $0 = address }

        // Runs until the service group starts a graceful shutdown (or is cancelled).
        try? await gracefulShutdown()

        // Closes the listening socket, then each connection once its current response is written.
        let loop = channel.eventLoop
        let closed = loop.makePromise(of: Void.self)
        quiescing.initiateShutdown(promise: closed)
        // A client in the middle of a request must not hold up shutdown for long. (A second
        // completion of the promise is ignored.)
        let deadline = loop.scheduleTask(in: Self.shutdownGrace) { closed.succeed() }
        try? await closed.futureResult.get()
        deadline.cancel()
        // The quiescing helper completes a promise on the event loops when it goes: let it go now, while they
        // run, rather than with this endpoint after they shut down (NIO reports that as an error).
        self.bound.withLockedValue { $0 = nil }
        self.logger.debug("metrics endpoint stopped")
    }

    /// The listening socket, bound on the first call.
    private func boundSocket() async throws -> (channel: Channel, quiescing: ServerQuiescingHelper) {
        if let bound = self.bound.withLockedValue({ $0 }) { return bound }
        let quiescing = ServerQuiescingHelper(group: self.group)
        let channel = try await self.bind(quiescing: quiescing)
        self.bound.withLockedValue { $0 = (channel, quiescing) }
        return (channel, quiescing)
    }

    private func bind(quiescing: ServerQuiescingHelper) async throws -> Channel {
        let registry = self.registry
        let idleTimeout = self.idleTimeout
        return try await ServerBootstrap(group: self.group)
            .serverChannelOption(.backlog, value: 128)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        quiescing.makeServerChannelHandler(channel: channel)
                    )
                }
            }
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    // Without NIO's error handler: it answers a request cut off by a quiescing close with a
                    // 400 on the closed channel, which NIO's pipelining handler asserts against. The
                    // handler below answers malformed requests itself.
                    try channel.pipeline.syncOperations.addHandler(IdleStateHandler(allTimeout: idleTimeout))
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: false)
                    try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(registry: registry))
                }
            }
            .bindListener(to: self.endpoint, purpose: "--metrics")
    }
}

/// Answers one HTTP request at a time (NIOHTTP1's pipelining handler queues the rest).
final class MetricsHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    static let path = "/metrics"
    static let contentType = "text/plain; version=0.0.4"

    private let registry: PrometheusCollectorRegistry
    private var request: HTTPRequestHead?
    /// Reused for each scrape, so its capacity settles at the exposition's size.
    private var exposition: [UInt8] = []

    init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.request = head
        case .body:
            break  // A body is read and ignored.
        case .end:
            guard let head = self.request else { return }
            self.request = nil
            self.respond(to: head, context: context)
        }
    }

    /// A connection with neither reads nor writes for the idle timeout (``IdleStateHandler``) is closed.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .all {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    /// A malformed request gets `400 Bad Request` (when the socket is still open) and a close; any other
    /// error just a close. Responses are written whole, so none is ever half written here.
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard error is HTTPParserError, context.channel.isActive else {
            context.close(promise: nil)
            return
        }
        self.request = nil
        let headers = HTTPHeaders([("Connection", "close"), ("Content-Length", "0")])
        context.write(
            self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .badRequest, headers: headers))),
            promise: nil
        )
        let channel = context.channel
        context.writeAndFlush(self.wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }

    private func respond(to head: HTTPRequestHead, context: ChannelHandlerContext) {
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        var headers = HTTPHeaders()
        let status: HTTPResponseStatus
        var body = context.channel.allocator.buffer(capacity: 0)
        if path != Self.path {
            status = .notFound
            headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
            body.writeString("Not Found\n")
        } else if head.method != .GET && head.method != .HEAD {
            status = .methodNotAllowed
            headers.add(name: "Allow", value: "GET, HEAD")
            headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
            body.writeString("Method Not Allowed\n")
        } else {
            status = .ok
            headers.add(name: "Content-Type", value: Self.contentType)
            self.exposition.removeAll(keepingCapacity: true)
            self.registry.emit(into: &self.exposition)
            body.writeBytes(self.exposition)
        }
        headers.add(name: "Content-Length", value: "\(body.readableBytes)")
        let keepAlive = head.isKeepAlive
        if !keepAlive {
            headers.add(name: "Connection", value: "close")
        } else if head.version.major == 1 && head.version.minor == 0 {
            headers.add(name: "Connection", value: "keep-alive")
        }

        context.write(
            self.wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))),
            promise: nil
        )
        if head.method != .HEAD {
            context.write(self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        }
        let written: EventLoopPromise<Void>? = keepAlive ? nil : context.eventLoop.makePromise()
        context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: written)
        if let written {
            let channel = context.channel
            written.futureResult.whenComplete { _ in channel.close(promise: nil) }
        }
    }
}
