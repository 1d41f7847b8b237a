import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A loopback TCP listener on an ephemeral port: the proxy's target.
///
/// With a handler, an accept loop runs on a background thread and each accepted socket gets
/// its own thread running the handler (see the ready-made behaviours below). Without one, the
/// test takes connections itself with `accept(timeout:)`.
///
/// `stop()` (always deferred by tests) ends the accept loop; handlers notice within ~0.1 s,
/// close their sockets and return. Every handler also gives up after `maxLifetime` seconds.
final class TestServer: @unchecked Sendable {
    /// Handler arguments: the accepted socket, its 0-based accept index, the server.
    typealias Handler = @Sendable (TestSocket, Int, TestServer) -> Void

    let host: String
    let port: Int
    let maxLifetime: Double = 120
    private let listener: TestSocket
    private let hasAcceptLoop: Bool
    private let lock = NSLock()
    private var stopped = false
    private var accepted = 0
    private var received = 0
    private var activeHandlers = 0
    private var ends: [StreamEnd] = []

    /// - Parameters:
    ///   - backlog: listen() backlog; 0 lets one connection queue, so a second connect's SYN is dropped.
    ///   - receiveBufferSize: SO_RCVBUF set on the listener (inherited by accepted sockets).
    ///   - port: the port to listen on; 0 (the default) for a free one.
    init(
        host: String = "127.0.0.1",
        port: Int = 0,
        backlog: Int32 = 256,
        receiveBufferSize: Int? = nil,
        handler: Handler? = nil
    ) throws {
        _ = ignoreSIGPIPE
        let fd = try TestSocket.makeSocket(family: host.contains(":") ? AF_INET6 : AF_INET)
        let listener = TestSocket(adopting: fd)
        listener.setOption(SOL_SOCKET, SO_REUSEADDR, 1)
        if let receiveBufferSize { listener.setReceiveBufferSize(receiveBufferSize) }
        let bound = try TestSocket.withAddress(host: host, port: port) { address, length, _ in bind(fd, address, length) }
        guard bound == 0 else { throw SocketError.system("bind \(host):\(port)", errno) }
        guard listen(fd, backlog) == 0 else { throw SocketError.system("listen", errno) }
        self.host = host
        self.listener = listener
        self.port = listener.localPort
        self.hasAcceptLoop = handler != nil
        if let handler {
            let thread = Thread { [self] in self.acceptLoop(handler) }
            thread.start()
        }
    }

    /// A loopback port nothing listens on now (bound, then let go).
    static func freePort() throws -> Int {
        let probe = try TestServer()
        defer { probe.stop() }
        return probe.port
    }

    var isStopped: Bool { self.lock.withLock { self.stopped } }
    var acceptedCount: Int { self.lock.withLock { self.accepted } }
    /// Bytes counted by reading behaviours (`discard`, `echo`).
    var receivedBytes: Int { self.lock.withLock { self.received } }
    var runningHandlers: Int { self.lock.withLock { self.activeHandlers } }
    /// How each reading handler's input ended.
    var streamEnds: [StreamEnd] { self.lock.withLock { self.ends } }

    func countReceived(_ bytes: Int) { self.lock.withLock { self.received += bytes } }
    func recordEnd(_ end: StreamEnd) { self.lock.withLock { self.ends.append(end) } }

    /// Stops accepting; handlers wind down on their own threads.
    func stop() {
        let closeHere = self.lock.withLock { () -> Bool in
            defer { self.stopped = true }
            return !self.stopped && !self.hasAcceptLoop
        }
        if closeHere { self.listener.close() }
    }

    private func acceptLoop(_ handler: @escaping Handler) {
        let started = now()
        while !self.isStopped && now() - started < self.maxLifetime {
            guard let socket = try? self.accept(timeout: 0.1) else { continue }
            let index = self.lock.withLock { () -> Int in
                self.activeHandlers += 1
                self.accepted += 1
                return self.accepted - 1
            }
            let thread = Thread { [self] in
                handler(socket, index, self)
                socket.close()
                self.lock.withLock { self.activeHandlers -= 1 }
            }
            thread.stackSize = 512 * 1024
            thread.start()
        }
        self.listener.close()
    }

    /// Takes one connection (manual mode, or used by the accept loop).
    func accept(timeout: Double) throws -> TestSocket {
        guard try self.listener.poll(events: Int16(POLLIN), timeout: timeout) else {
            throw SocketError.timeout("accept on port \(self.port)")
        }
        let fd = Glibc.accept(self.listener.fd, nil, nil)
        guard fd >= 0 else { throw SocketError.system("accept", errno) }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        if !self.hasAcceptLoop { self.lock.withLock { self.accepted += 1 } }
        return TestSocket(adopting: fd)
    }

    /// Waits (async) until `count` connections have been accepted.
    func waitForAccepted(_ count: Int, timeout: Double) async -> Bool {
        let deadline = now() + timeout
        while self.acceptedCount < count {
            if now() >= deadline { return false }
            await delay(seconds: 0.005)
        }
        return true
    }

    /// Whether a handler should give up: the server stopped or the lifetime ran out.
    func shouldStop(since started: Double) -> Bool { self.isStopped || now() - started > self.maxLifetime }

    /// Reads until EOF/reset/stop, passing data to `onData` (which returns false to stop reading).
    @discardableResult
    func readLoop(_ socket: TestSocket, max: Int = 65536, onData: ([UInt8]) -> Bool) -> StreamEnd {
        let started = now()
        while !self.shouldStop(since: started) {
            guard let result = try? socket.recv(max: max, timeout: 0.1) else { return .error(EIO) }
            switch result {
            case .data(let bytes):
                if !onData(bytes) { return .timeout }
            case .end(.timeout): continue
            case .end(let end): return end
            }
        }
        return .timeout
    }

    /// Holds the connection without reading until the server stops.
    func hold(_ socket: TestSocket) {
        let started = now()
        while !self.shouldStop(since: started) { usleep(50_000) }
    }
}

// MARK: Ready-made behaviours

extension TestServer {
    /// Writes back everything it reads; on EOF shuts down writing.
    static let echo: Handler = { socket, _, server in
        var failed = false
        let end = server.readLoop(socket) { bytes in
            server.countReceived(bytes.count)
            do { try socket.send(bytes, timeout: 30) } catch { failed = true }
            return !failed
        }
        server.recordEnd(end)
        if end == .eof { socket.shutdownWrite() }
    }

    /// Accepts and never reads (the lazy forward server); holds the socket until stopped.
    static let sinkNeverReads: Handler = { socket, _, server in server.hold(socket) }

    /// Reads and discards everything, counting bytes.
    static let discard: Handler = { socket, _, server in
        let end = server.readLoop(socket, max: 1 << 20) { bytes in
            server.countReceived(bytes.count)
            return true
        }
        server.recordEnd(end)
    }

    /// Closes each connection as soon as it is accepted.
    static let closeImmediately: Handler = { _, _, _ in }

    /// Writes as fast as the peer takes it until a write fails or the server stops (lazy reverse).
    static let writeForever: Handler = { socket, _, server in
        let chunk = [UInt8](repeating: 0x42, count: 65536)
        let started = now()
        while !server.shouldStop(since: started) {
            switch socket.trySend(chunk) {
            case .success(let count) where count > 0: continue
            case .success: _ = try? socket.poll(events: Int16(POLLOUT), timeout: 0.1)
            case .failure(let error):
                if case .ended(_, let end) = error { server.recordEnd(end) }
                return
            }
        }
    }

    /// Waits for EOF, then writes `byte` and closes (the seed's one-way shutdown server).
    static func waitForEOFThenWrite(_ byte: UInt8) -> Handler {
        { socket, _, server in
            let end = server.readLoop(socket) { bytes in
                server.countReceived(bytes.count)
                return true
            }
            server.recordEnd(end)
            if end == .eof { try? socket.send([byte], timeout: 5) }
        }
    }

    /// Sends `bytes` as fast as the peer takes them, then closes.
    static func sendThenClose(_ bytes: [UInt8]) -> Handler {
        { socket, _, _ in try? socket.send(bytes, timeout: 60) }
    }
}

extension TestServer {
    /// A server (backlog 0) whose accept queue `filler` has filled: the SYNs of further connects are dropped,
    /// so they stay pending until they time out or `filler` is accepted.
    static func withFullQueue() throws -> (server: TestServer, filler: TestSocket) {
        let server = try TestServer(backlog: 0)
        do {
            return (server, try TestSocket.connect(port: server.port))
        } catch {
            server.stop()
            throw error
        }
    }
}
