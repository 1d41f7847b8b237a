import NIOCore
import NIOPosix

/// How a bridge makes its server connection. The listener uses ``TCPServerConnector``; handler tests
/// use one that hands out `EmbeddedChannel`s.
protocol ServerConnector: Sendable {
    /// Starts connecting on `eventLoop`. `initialize` must be run on the new channel before it is
    /// active (it installs the bridge's server-side handler). Every channel that tries to connect is
    /// registered with `attempts` first, so that the caller can give up on the connect (``ConnectAttempts/cancel()``).
    func connect(
        on eventLoop: EventLoop,
        configuration: BridgeConfiguration,
        attempts: ConnectAttempts,
        initialize: @escaping @Sendable (Channel) throws -> Void
    ) -> EventLoopFuture<Channel>

    /// The target, for logs.
    var targetDescription: String { get }

    /// Whether the connect holds back the ACK that ends the server's handshake (`TCP_QUICKACK` off), so that
    /// the first bytes written carry it. The bridge then sends it at once if it has nothing to write when
    /// the connect completes (``Bridge``, `.startForwarding`).
    var holdsHandshakeACK: Bool { get }
}

extension ServerConnector {
    var holdsHandshakeACK: Bool { false }

    /// Starts connecting, for a caller that never gives up on the connect.
    func connect(
        on eventLoop: EventLoop,
        configuration: BridgeConfiguration,
        initialize: @escaping @Sendable (Channel) throws -> Void
    ) -> EventLoopFuture<Channel> {
        self.connect(on: eventLoop, configuration: configuration, attempts: ConnectAttempts(eventLoop: eventLoop), initialize: initialize)
    }
}

/// The server connections one connect is trying, so that whoever started it can give up on it.
///
/// A bridge or stream that ends while connecting closes them at once, rather than holding a descriptor (and
/// a SYN-SENT socket, and its `--max-connections` slot) until the connect completes or times out. A target
/// given as a name may try several addresses; a connector that waits on something else first (a name being
/// resolved) says what ends that wait (``whenCancelled(_:)``). Used on one event loop only.
final class ConnectAttempts: @unchecked Sendable {
    private let eventLoop: EventLoop
    /// The first attempt, and any after it (a name's other addresses): one attempt allocates nothing more.
    private var first: Channel?
    private var others: [Channel] = []
    private var cancelHandlers: [() -> Void] = []
    /// Whether the connect was given up: its future fails, and whatever it would still try is not tried.
    private(set) var isCancelled = false

    init(eventLoop: EventLoop) {
        self.eventLoop = eventLoop
    }

    /// `channel` is about to connect (called from its initializer).
    /// - Throws: `ChannelError.ioOnClosedChannel` if the connect was given up: the attempt is not made.
    func started(_ channel: Channel) throws {
        self.eventLoop.preconditionInEventLoop()
        guard !self.isCancelled else { throw ChannelError.ioOnClosedChannel }
        if self.first == nil { self.first = channel } else { self.others.append(channel) }
    }

    /// Runs `body` when the connect is given up (at once if it was).
    func whenCancelled(_ body: @escaping () -> Void) {
        self.eventLoop.preconditionInEventLoop()
        if self.isCancelled { body() } else { self.cancelHandlers.append(body) }
    }

    /// The connect completed: nothing is left to give up.
    func finished() {
        self.eventLoop.preconditionInEventLoop()
        self.first = nil
        self.others.removeAll()
        self.cancelHandlers.removeAll()
    }

    /// Gives up: closes every channel still trying (which fails its connect) and ends any other wait.
    func cancel() {
        self.eventLoop.preconditionInEventLoop()
        guard !self.isCancelled else { return }
        self.isCancelled = true
        let channels = [self.first].compactMap { $0 } + self.others
        let handlers = self.cancelHandlers
        self.finished()
        for channel in channels { channel.close(promise: nil) }
        for handler in handlers { handler() }
    }
}

/// Connects over TCP to a fixed target, on the client's event loop.
///
/// With a `spoofedSource` (`--spoof-source` in transparent mode) the socket gets `IP_TRANSPARENT`
/// (`IPV6_TRANSPARENT`) and is bound to the client's address with port 0 (the kernel picks a free port,
/// as HAProxy's `usesrc clientip` does) before it connects, so the server sees the real client. The
/// server's replies are addressed to the client, so they must be routed back through the proxy's host
/// and handed to this socket there: `docs/TRANSPARENT.md` gives the rules.
struct TCPServerConnector: ServerConnector {
    let target: ConnectTarget
    /// The client's address to connect from, if the server must see it.
    var spoofedSource: SpoofedSource? = nil
    /// Hold back the handshake's last ACK for the first bytes (for a ``Bridge``, which sends it itself when
    /// it has none; not for callers that do not).
    var holdsHandshakeACK = false

    func connect(
        on eventLoop: EventLoop,
        configuration: BridgeConfiguration,
        attempts: ConnectAttempts,
        initialize: @escaping @Sendable (Channel) throws -> Void
    ) -> EventLoopFuture<Channel> {
        guard let source = self.spoofedSource else {
            return self.connect(from: nil, on: eventLoop, configuration, attempts, initialize)
        }
        var connected = self.connect(from: source.address(), on: eventLoop, configuration, attempts, initialize)
        for _ in 1..<source.attempts {
            connected = connected.flatMapError { error in
                guard let code = (error as? IOError)?.errnoCode, SpoofedSource.isPortTaken(code), !attempts.isCancelled
                else { return eventLoop.makeFailedFuture(error) }
                return self.connect(from: source.address(), on: eventLoop, configuration, attempts, initialize)
            }
        }
        return connected
    }

    private func connect(
        from source: SocketAddress?,
        on eventLoop: EventLoop,
        _ configuration: BridgeConfiguration,
        _ attempts: ConnectAttempts,
        _ initialize: @escaping @Sendable (Channel) throws -> Void
    ) -> EventLoopFuture<Channel> {
        // ClientBootstrap applies channel options, then binds, then connects; it sets TCP_NODELAY by default.
        // Half-closure is turned on by BridgeChannelOptions in the initializer.
        var bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(configuration.connectTimeout)
        #if os(Linux)
        if self.holdsHandshakeACK {
            bootstrap = bootstrap.channelOption(LinuxSocketOptions.quickAck, value: 0)
        }
        #endif
        if let source {
            bootstrap = bootstrap.channelOption(LinuxSocketOptions.transparentOption(for: source), value: 1)
                .bind(to: source)
            if source.port != 0 {  // a picked port (``SpoofedSource/address()``)
                bootstrap = bootstrap.channelOption(.socketOption(.so_reuseaddr), value: 1)
            }
        }
        switch self.target {
        case .address(let address):
            // One attempt: the bridge's handler goes in before the channel is active.
            return bootstrap.channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try attempts.started(channel)
                    try BridgeChannelOptions.apply(configuration, to: channel, reading: .downstream)
                    try initialize(channel)
                }
            }.connect(to: address)
        case .name(let host, let port):
            // Happy Eyeballs may race several attempts, and a handler can live in one pipeline only: it
            // goes into the winner, which reads nothing until then (autoRead off, on after).
            return bootstrap.channelOption(.autoRead, value: false)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try attempts.started(channel)
                        try BridgeChannelOptions.apply(configuration, to: channel, reading: .downstream)
                    }
                }
                .connect(host: host, port: port)
                .flatMapThrowing { channel in
                    do {
                        try initialize(channel)
                        try channel.syncOptions?.setOption(.autoRead, value: true)
                        return channel
                    } catch {
                        channel.close(promise: nil)
                        throw error
                    }
                }
        }
    }

    var targetDescription: String { self.target.description }
}

/// Where a bridge connects: an address known at start, or a name resolved for each connection (every
/// address it resolves to is tried, IPv6 and IPv4 raced as Happy Eyeballs does).
enum ConnectTarget: Sendable, Hashable, CustomStringConvertible {
    case address(SocketAddress)
    case name(host: String, port: Int)

    init(_ endpoint: Endpoint) {
        if let address = try? SocketAddress(ipAddress: endpoint.host, port: endpoint.port) {
            self = .address(address)
        } else {
            self = .name(host: endpoint.host, port: endpoint.port)
        }
    }

    var description: String {
        switch self {
        case .address(let address): address.logDescription
        case .name(let host, let port): Endpoint(host: host, port: port).description
        }
    }
}

/// Whether a failed connect failed by timing out (`--connect-timeout`), for the close reason: NIO reports a
/// single attempt's timeout directly, and Happy Eyeballs' inside `NIOConnectionError`.
func isConnectTimeout(_ error: Error) -> Bool {
    if case ChannelError.connectTimeout = error { return true }
    if let error = error as? NIOConnectionError {
        return error.connectionErrors.contains { attempt in
            if case ChannelError.connectTimeout = attempt.error { return true }
            return false
        }
    }
    return false
}
