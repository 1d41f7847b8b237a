import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Resolves a host name to addresses without blocking `eventLoop`; the future completes on it.
typealias SOCKSResolver = @Sendable (_ host: String, _ port: Int, _ eventLoop: EventLoop) -> EventLoopFuture<[SocketAddress]>

/// Connects a SOCKS client's bridge to the destination it asked for.
///
/// A name is resolved off the event loop, then every address is checked against `--deny-destination`
/// (so a name cannot sneak around it), and the allowed addresses are tried in the resolver's order until one
/// connects. Resolving and all attempts together are bounded by `--connect-timeout`.
struct SOCKSConnector: ServerConnector {
    /// Where the client asked to go.
    let destination: SOCKSDestination
    /// The listener's SOCKS options (the denied networks).
    let socks: SOCKSConfiguration
    /// How names become addresses; ``SOCKSConnector/resolveWithGetaddrinfo`` outside tests.
    var resolve: SOCKSResolver = SOCKSConnector.resolveWithGetaddrinfo

    var targetDescription: String { self.destination.description }

    func connect(
        on eventLoop: EventLoop,
        configuration: BridgeConfiguration,
        attempts: ConnectAttempts,
        initialize: @escaping @Sendable (Channel) throws -> Void
    ) -> EventLoopFuture<Channel> {
        // The bridge calls this on its event loop; anyone else gets there first.
        guard eventLoop.inEventLoop else {
            return eventLoop.flatSubmit {
                self.connect(on: eventLoop, configuration: configuration, attempts: attempts, initialize: initialize)
            }
        }
        let promise = eventLoop.makePromise(of: Channel.self)
        let timeout = configuration.connectTimeout
        let deadline = NIODeadline.now() + timeout
        let finished = NIOLoopBoundBox(false, eventLoop: eventLoop)
        let timer = eventLoop.scheduleTask(deadline: deadline) {
            guard !finished.value else { return }
            finished.value = true
            promise.fail(ChannelError.connectTimeout(timeout))
        }
        promise.futureResult.whenComplete { _ in timer.cancel() }
        // Given up (the bridge ended): fail now, whatever is still being resolved or tried.
        attempts.whenCancelled {
            guard !finished.value else { return }
            finished.value = true
            promise.fail(ChannelError.ioOnClosedChannel)
        }

        let socks = self.socks
        let destination = self.destination
        self.addresses(on: eventLoop).whenComplete { result in
            guard !finished.value else { return }
            switch result {
            case .failure(let error):
                finished.value = true
                promise.fail(error)
            case .success(let addresses):
                let allowed = addresses.filter { socks.allows($0) }
                guard !allowed.isEmpty else {
                    finished.value = true
                    promise.fail(SOCKSConnectError.destinationDenied(destination.description))
                    return
                }
                Self.attempt(
                    allowed[...], lastError: nil, eventLoop: eventLoop, deadline: deadline, configuration: configuration,
                    attempts: attempts, initialize: initialize, promise: promise, finished: finished
                )
            }
        }
        return promise.futureResult
    }

    /// The addresses to try: the one asked for, or what the name resolves to.
    private func addresses(on eventLoop: EventLoop) -> EventLoopFuture<[SocketAddress]> {
        switch self.destination {
        case .address(let address):
            return eventLoop.makeSucceededFuture([address])
        case .name(let host, let port):
            if let address = SOCKSDestination.literalAddress(host, port: port) {
                return eventLoop.makeSucceededFuture([address])
            }
            return self.resolve(host, port, eventLoop)
        }
    }

    /// Tries `addresses` one after the other, each within what is left of the deadline.
    ///
    /// The bridge's handler goes into the channel that connected, and only that one: a handler can live in one
    /// pipeline only. It is added where the connect succeeds, which NIO reports before the channel's
    /// `channelActive` and before its first `read()`, so the handler sees the channel as every handler does.
    private static func attempt(
        _ addresses: ArraySlice<SocketAddress>,
        lastError: Error?,
        eventLoop: EventLoop,
        deadline: NIODeadline,
        configuration: BridgeConfiguration,
        attempts: ConnectAttempts,
        initialize: @escaping @Sendable (Channel) throws -> Void,
        promise: EventLoopPromise<Channel>,
        finished: NIOLoopBoundBox<Bool>
    ) {
        guard let address = addresses.first else {
            finished.value = true
            promise.fail(lastError ?? SOCKSConnectError.destinationDenied(""))
            return
        }
        let remaining = deadline - .now()
        guard remaining > .zero else { return }  // the timer fails the promise
        // ClientBootstrap sets TCP_NODELAY by default; BridgeChannelOptions turns on half-closure.
        ClientBootstrap(group: eventLoop)
            .connectTimeout(remaining)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try attempts.started(channel)
                    try BridgeChannelOptions.apply(configuration, to: channel, reading: .downstream)
                }
            }
            .connect(to: address)
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    guard !finished.value else {
                        // Too late: the client already got its timeout.
                        channel.close(promise: nil)
                        return
                    }
                    finished.value = true
                    do {
                        try initialize(channel)
                        promise.succeed(channel)
                    } catch {
                        channel.close(promise: nil)
                        promise.fail(error)
                    }
                case .failure(let error):
                    guard !finished.value else { return }
                    Self.attempt(
                        addresses.dropFirst(), lastError: error, eventLoop: eventLoop, deadline: deadline,
                        configuration: configuration, attempts: attempts, initialize: initialize, promise: promise,
                        finished: finished
                    )
                }
            }
    }

    /// Resolves `host` with `getaddrinfo` on NIO's shared thread pool, never on the event loop.
    static let resolveWithGetaddrinfo: SOCKSResolver = { host, port, eventLoop in
        NIOThreadPool.singleton.runIfActive(eventLoop: eventLoop) {
            try SOCKSConnector.getaddrinfo(host: host, port: port)
        }
    }

    /// The TCP addresses of `host`, in the order the system prefers (RFC 6724), without duplicates.
    static func getaddrinfo(host: String, port: Int) throws -> [SocketAddress] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        #if canImport(Darwin)
        hints.ai_socktype = SOCK_STREAM
        #else
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        #endif
        hints.ai_protocol = Int32(IPPROTO_TCP)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = Glibc.getaddrinfo(host, String(port), &hints, &list)
        guard status == 0, let first = list else { throw SOCKSConnectError.cannotResolve(host) }
        defer { freeaddrinfo(first) }
        var addresses: [SocketAddress] = []
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let current = entry {
            defer { entry = current.pointee.ai_next }
            guard let raw = current.pointee.ai_addr else { continue }
            let address: SocketAddress
            switch current.pointee.ai_family {
            case AF_INET:
                address = raw.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { SocketAddress($0.pointee, host: host) }
            case AF_INET6:
                address = raw.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { SocketAddress($0.pointee, host: host) }
            default:
                continue
            }
            if !addresses.contains(address) { addresses.append(address) }
        }
        guard !addresses.isEmpty else { throw SOCKSConnectError.cannotResolve(host) }
        return addresses
    }
}

/// Why a SOCKS destination could not be reached before any connection was tried.
enum SOCKSConnectError: Error, Hashable, CustomStringConvertible {
    /// Every address of the destination is in a `--deny-destination` network (or is unspecified).
    case destinationDenied(String)
    /// The host name does not resolve.
    case cannotResolve(String)

    var description: String {
        switch self {
        case .destinationDenied(let destination): "destination \(destination) is not allowed"
        case .cannotResolve(let host): "cannot resolve host '\(host)'"
        }
    }
}

extension SOCKS5ReplyCode {
    /// The reply a failed connect earns (RFC 1928 §6).
    static func forConnectError(_ error: Error) -> SOCKS5ReplyCode {
        switch error {
        case SOCKSConnectError.destinationDenied: return .notAllowed
        case SOCKSConnectError.cannotResolve: return .hostUnreachable
        case ChannelError.connectTimeout: return .ttlExpired
        case let error as IOError:
            switch error.errnoCode {
            case ECONNREFUSED: return .connectionRefused
            case ENETUNREACH, ENETDOWN: return .networkUnreachable
            case EHOSTUNREACH, EHOSTDOWN: return .hostUnreachable
            case ETIMEDOUT: return .ttlExpired
            case EACCES, EPERM: return .notAllowed
            default: return .generalFailure
            }
        case let error as NIOConnectionError:
            if let last = error.connectionErrors.last { return Self.forConnectError(last.error) }
            return .hostUnreachable
        default:
            return .generalFailure
        }
    }
}
