import Atomics
import CTCPProxyLinux
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A thread that serves bridges off NIO: its own epoll (edge-triggered for bridges), an eventfd for
/// commands, and per bridge two sockets with either pipes (splice(2)) or user-space buffers (read(2) and
/// write(2)) between them (docs/BRIDGE.md, "The direct engine").
///
/// Bridges come in two ways: NIO hands over one that carries bulk (``add(_:)``, on ``shared``), or an
/// engine of the ``pool(count:)`` accepts it itself from a listening socket (``addListener(_:)``).
/// From then on only this thread touches them. Nothing is allocated, locked or logged per chunk. Timeouts
/// are sampled on the epoll timeout, at the nearest deadline of any bridge.
final class DirectEngine: Sendable {
    /// The engine NIO bridges hand bulk to, started by the first bridge that splices; `nil` if it cannot
    /// start (no epoll, or not Linux): then every bridge stays on NIO.
    static let shared: DirectEngine? = {
        let engine = DirectEngine()
        if engine != nil { DirectEngine.isStarted.store(true, ordering: .releasing) }
        return engine
    }()

    private static let isStarted = ManagedAtomic(false)

    /// The engine if a bridge ever started it; `nil` without starting one.
    static var startedEngine: DirectEngine? {
        Self.isStarted.load(ordering: .acquiring) ? Self.shared : nil
    }

    /// Engines that accept for direct listeners, one per `--threads`, made as the first listener asks.
    private static let poolEngines = NIOLockedValueBox<[DirectEngine]>([])

    /// `count` engines for direct listeners (shared by every listener of the process); `nil` if they
    /// cannot start.
    static func pool(count: Int) -> [DirectEngine]? {
        Self.poolEngines.withLockedValue { engines in
            while engines.count < count {
                guard let engine = DirectEngine() else { return nil }
                engines.append(engine)
            }
            return Array(engines.prefix(count))
        }
    }

    /// Every engine that runs: a listener's drain deadline concerns them all.
    static func notifyDrainChanged() {
        Self.startedEngine?.drainChanged()
        for engine in Self.poolEngines.withLockedValue({ $0 }) { engine.drainChanged() }
    }

    enum Command: Sendable {
        case add(DirectHandover)
        case drainChanged
        case addListener(DirectAcceptor, done: @Sendable (_ batches: Bool) -> Void)
        case removeListener(DirectAcceptor, done: @Sendable () -> Void)
    }

    private let epoll: CInt
    private let wakeUp: CInt
    private let inbox = NIOLockedValueBox<[Command]>([])
    private let thread: NIOThreadPool
    /// Spliced bridges open right now (for tests and logs).
    private let activeCount = ManagedAtomic(0)

    private init?() {
        let epoll = CTCPProxyLinux_epollCreate()
        guard epoll >= 0 else { return nil }
        let wakeUp = CTCPProxyLinux_eventCreate()
        guard wakeUp >= 0, CTCPProxyLinux_epollAdd(epoll, wakeUp, CTCPProxyLinux_EPOLLIN, Self.wakeUpToken) == 0 else {
            closeDescriptor(epoll)
            if wakeUp >= 0 { closeDescriptor(wakeUp) }
            return nil
        }
        self.epoll = epoll
        self.wakeUp = wakeUp
        self.thread = NIOThreadPool(numberOfThreads: 1)
        self.thread.start()
        self.thread.submit { [self] _ in
            var loop = DirectEngineLoop(epoll: self.epoll, wakeUp: self.wakeUp, activeCount: self.activeCount)
            loop.run {
                self.inbox.withLockedValue { inbox in
                    defer { inbox.removeAll(keepingCapacity: true) }
                    return inbox
                }
            }
        }
    }

    /// Spliced bridges open right now.
    var activeBridges: Int { self.activeCount.load(ordering: .relaxed) }

    /// Takes over a bridge. Its descriptors belong to the engine from now on.
    func add(_ handover: DirectHandover) {
        self.send(.add(handover))
    }

    /// Starts accepting from `acceptor`'s socket (with every other engine it is added to: the kernel wakes
    /// one of them per connection); returns once this engine watches it.
    /// - Returns: whether this engine batches its reads and writes through io_uring (``IOBatch``).
    func addListener(_ acceptor: DirectAcceptor) async -> Bool {
        await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            self.send(.addListener(acceptor, done: { continuation.resume(returning: $0) }))
        }
    }

    /// Stops accepting from `acceptor`'s socket; returns once this engine no longer watches it.
    func removeListener(_ acceptor: DirectAcceptor) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            self.send(.removeListener(acceptor, done: { continuation.resume() }))
        }
    }

    /// A listener began draining: look at the bridges' drain deadlines again.
    func drainChanged() {
        self.send(.drainChanged)
    }

    private func send(_ command: Command) {
        self.inbox.withLockedValue { $0.append(command) }
        _ = CTCPProxyLinux_eventSignal(self.wakeUp)
    }

    static let wakeUpToken = UInt64.max
    /// Listening sockets' tokens: this bit and the listener's index (bridge tokens never have it).
    static let listenerTokenBit: UInt64 = 1 << 63
}
