import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// How reading or writing a stream ended.
enum StreamEnd: Equatable, Sendable, CustomStringConvertible {
    case eof
    case reset
    case timeout
    case error(Int32)

    var description: String {
        switch self {
        case .eof: return "EOF"
        case .reset: return "reset"
        case .timeout: return "timeout"
        case .error(let code): return "error \(code) (\(String(cString: strerror(code))))"
        }
    }

    /// EOF or reset: the peer is gone or done.
    var isClosed: Bool { self == .eof || self == .reset || self == .error(EPIPE) }
}

enum SocketError: Error, CustomStringConvertible {
    case system(String, Int32)
    case timeout(String)
    case ended(String, StreamEnd)

    var description: String {
        switch self {
        case .system(let what, let code): return "\(what): \(String(cString: strerror(code))) (errno \(code))"
        case .timeout(let what): return "timed out: \(what)"
        case .ended(let what, let end): return "\(what): stream ended with \(end)"
        }
    }
}

/// SIGPIPE would kill the test runner; sends use MSG_NOSIGNAL, and this is a second guard.
let ignoreSIGPIPE: Void = { _ = signal(SIGPIPE, SIG_IGN) }()

func now() -> Double { Date().timeIntervalSince1970 }

/// A thin TCP socket over Glibc for tests. The descriptor is non-blocking; every operation
/// waits with poll() up to its timeout, so nothing blocks forever.
/// Do not `close()` while another thread is using the socket.
final class TestSocket: @unchecked Sendable {
    private let lock = NSLock()
    private var descriptor: Int32

    var fd: Int32 { self.lock.withLock { self.descriptor } }

    init(adopting fd: Int32) {
        _ = ignoreSIGPIPE
        self.descriptor = fd
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }

    deinit {
        if self.descriptor >= 0 { Glibc.close(self.descriptor) }
    }

    // MARK: Addresses

    /// A sockaddr for a numeric IPv4 or IPv6 address (or "localhost").
    static func withAddress<R>(
        host: String, port: Int, _ body: (UnsafePointer<sockaddr>, socklen_t, Int32) throws -> R
    ) throws -> R {
        var host = host == "localhost" ? "127.0.0.1" : host
        if host.contains(":") {
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = in_port_t(UInt16(port)).bigEndian
            // `fe80::1%3`: a link-local address on the interface with index 3 (a number, so it means the
            // same in every namespace's thread).
            if let percent = host.firstIndex(of: "%") {
                guard let scope = UInt32(host[host.index(after: percent)...]) else {
                    throw SocketError.system("bad IPv6 scope in \(host)", EINVAL)
                }
                address.sin6_scope_id = scope
                host = String(host[..<percent])
            }
            guard inet_pton(AF_INET6, host, &address.sin6_addr) == 1 else {
                throw SocketError.system("bad IPv6 address \(host)", EINVAL)
            }
            return try withUnsafePointer(to: &address) {
                try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    try body($0, socklen_t(MemoryLayout<sockaddr_in6>.size), AF_INET6)
                }
            }
        }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port)).bigEndian
        guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else {
            throw SocketError.system("bad IPv4 address \(host)", EINVAL)
        }
        return try withUnsafePointer(to: &address) {
            try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                try body($0, socklen_t(MemoryLayout<sockaddr_in>.size), AF_INET)
            }
        }
    }

    static func makeSocket(family: Int32) throws -> Int32 {
        let fd = Glibc.socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SocketError.system("socket", errno) }
        return fd
    }

    /// The port the socket is bound to locally.
    var localPort: Int {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(self.fd, $0, &length) }
        }
        guard result == 0 else { return -1 }
        return withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) }
        }
    }

    // MARK: Connect

    /// Connects to HOST:PORT (numeric address), waiting up to `timeout` seconds.
    /// - Parameter receiveBufferSize: SO_RCVBUF, set before connecting so the window scale the peer sees
    ///   fits it (the window it may send stays that small).
    static func connect(host: String = "127.0.0.1", port: Int, timeout: Double = 5, receiveBufferSize: Int? = nil) throws -> TestSocket {
        let fd = try makeSocket(family: host.contains(":") ? AF_INET6 : AF_INET)
        let socket = TestSocket(adopting: fd)
        if let receiveBufferSize { socket.setReceiveBufferSize(receiveBufferSize) }
        let result = try withAddress(host: host, port: port) { address, length, _ in Glibc.connect(fd, address, length) }
        if result != 0 {
            guard errno == EINPROGRESS else { throw SocketError.system("connect to \(host):\(port)", errno) }
            guard try socket.poll(events: Int16(POLLOUT), timeout: timeout) else {
                throw SocketError.timeout("connect to \(host):\(port)")
            }
            let error = socket.pendingError()
            guard error == 0 else { throw SocketError.system("connect to \(host):\(port)", error) }
        }
        return socket
    }

    /// SO_ERROR.
    func pendingError() -> Int32 {
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(self.fd, SOL_SOCKET, SO_ERROR, &error, &length)
        return error
    }

    /// poll() for `events`; true when ready (or when the socket reports an error/hangup).
    func poll(events: Int16, timeout: Double) throws -> Bool {
        let deadline = now() + timeout
        while true {
            var entry = pollfd(fd: self.fd, events: events, revents: 0)
            let milliseconds = Int32(max(0, min(1000, (deadline - now()) * 1000)).rounded(.up))
            let result = Glibc.poll(&entry, 1, milliseconds)
            if result < 0 {
                if errno == EINTR { continue }
                throw SocketError.system("poll", errno)
            }
            if result > 0 { return true }
            if now() >= deadline { return false }
        }
    }

    // MARK: Options

    func setOption(_ level: Int32, _ name: Int32, _ value: Int32) {
        var value = value
        setsockopt(self.fd, level, name, &value, socklen_t(MemoryLayout<Int32>.size))
    }

    func setReceiveBufferSize(_ bytes: Int) { self.setOption(SOL_SOCKET, SO_RCVBUF, Int32(bytes)) }
    func setSendBufferSize(_ bytes: Int) { self.setOption(SOL_SOCKET, SO_SNDBUF, Int32(bytes)) }
    func setNoDelay() { self.setOption(Int32(IPPROTO_TCP), TCP_NODELAY, 1) }

    // MARK: TCP counters (Linux `struct tcp_info`, read at its ABI offsets)

    /// Segments this socket has received, handshake and bare ACKs included (`tcpi_segs_in`).
    var segmentsReceived: UInt32? { self.tcpInfoWord(at: 140) }

    private func tcpInfoWord(at offset: Int) -> UInt32? {
        var info = [UInt8](repeating: 0, count: 256)
        var length = socklen_t(info.count)
        guard getsockopt(self.fd, Int32(IPPROTO_TCP), TCP_INFO, &info, &length) == 0, Int(length) >= offset + 4 else {
            return nil
        }
        return info.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self) }
    }

    /// Bytes in this socket's send queue: not sent yet, or sent and not acknowledged (`TIOCOUTQ`).
    var sendQueueBytes: Int? {
        var count: CInt = 0
        guard ioctl(self.fd, UInt(TIOCOUTQ), &count) == 0 else { return nil }
        return Int(count)
    }

    /// Waits up to `timeout` seconds until the peer has acknowledged everything sent; whether it did. (The
    /// send queue, not the unacknowledged segments: under load a segment may not have left yet.)
    func waitUntilAcknowledged(timeout: Double) async -> Bool {
        let deadline = now() + timeout
        while now() < deadline {
            if self.sendQueueBytes == 0 { return true }
            await delay(seconds: 0.005)
        }
        return false
    }

    // MARK: Write

    /// Sends every byte, waiting up to `timeout` seconds in total.
    func send(_ bytes: [UInt8], timeout: Double = 10) throws {
        var offset = 0
        let deadline = now() + timeout
        while offset < bytes.count {
            let sent = bytes.withUnsafeBytes {
                Glibc.send(self.fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
            }
            if sent > 0 {
                offset += sent
                continue
            }
            let code = errno
            if sent < 0 && (code == EAGAIN || code == EWOULDBLOCK || code == EINTR) {
                let remaining = deadline - now()
                guard remaining > 0, try self.poll(events: Int16(POLLOUT), timeout: remaining) else {
                    throw SocketError.timeout("send (\(offset) of \(bytes.count) bytes sent)")
                }
                continue
            }
            if code == ECONNRESET || code == EPIPE {
                throw SocketError.ended("send (\(offset) of \(bytes.count) bytes sent)", code == EPIPE ? .error(EPIPE) : .reset)
            }
            throw SocketError.system("send", code)
        }
    }

    func send(_ text: String, timeout: Double = 10) throws { try self.send(Array(text.utf8), timeout: timeout) }

    /// One non-blocking send: bytes accepted, 0 if the socket would block, or how the stream ended.
    func trySend(_ bytes: [UInt8]) -> Result<Int, SocketError> {
        let sent = bytes.withUnsafeBytes {
            Glibc.send(self.fd, $0.baseAddress!, bytes.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
        }
        if sent >= 0 { return .success(sent) }
        let code = errno
        if code == EAGAIN || code == EWOULDBLOCK || code == EINTR { return .success(0) }
        if code == ECONNRESET { return .failure(.ended("send", .reset)) }
        return .failure(.ended("send", .error(code)))
    }

    /// Writes as much as the peer accepts for `seconds`, never blocking. Returns the bytes written
    /// and, if writing failed, how the stream ended.
    func writeAsMuchAsPossible(for seconds: Double, chunk: Int = 65536) -> (written: Int, end: StreamEnd?) {
        let bytes = [UInt8](repeating: 0x5A, count: chunk)
        let deadline = now() + seconds
        var written = 0
        while now() < deadline {
            switch self.trySend(bytes) {
            case .success(let count) where count > 0:
                written += count
            case .success:
                _ = try? self.poll(events: Int16(POLLOUT), timeout: min(0.05, max(0, deadline - now())))
            case .failure(.ended(_, let end)):
                return (written, end)
            case .failure:
                return (written, .error(EIO))
            }
        }
        return (written, nil)
    }

    /// Async form of `writeAsMuchAsPossible`: sleeps between attempts instead of holding a thread.
    func writeAsMuchAsPossibleAsync(for seconds: Double, chunk: Int = 65536) async -> (written: Int, end: StreamEnd?) {
        let bytes = [UInt8](repeating: 0x5A, count: chunk)
        let deadline = now() + seconds
        var written = 0
        while now() < deadline {
            switch self.trySend(bytes) {
            case .success(let count) where count > 0:
                written += count
            case .success:
                try? await Task.sleep(nanoseconds: 5_000_000)
            case .failure(.ended(_, let end)):
                return (written, end)
            case .failure:
                return (written, .error(EIO))
            }
        }
        return (written, nil)
    }

    func shutdownWrite() { _ = Glibc.shutdown(self.fd, Int32(SHUT_WR)) }

    /// Closes the descriptor (idempotent).
    func close() {
        self.lock.withLock {
            if self.descriptor >= 0 { Glibc.close(self.descriptor) }
            self.descriptor = -1
        }
    }

    /// Closes with SO_LINGER 0, so the peer gets a RST.
    func resetClose() {
        var option = linger(l_onoff: 1, l_linger: 0)
        setsockopt(self.fd, SOL_SOCKET, SO_LINGER, &option, socklen_t(MemoryLayout<linger>.size))
        self.close()
    }

    // MARK: Read

    enum ReadResult: Equatable {
        case data([UInt8])
        case end(StreamEnd)
    }

    /// One non-blocking recv: data, `.end(.timeout)` if nothing is there, or EOF/reset.
    func tryRecv(max: Int = 65536) -> ReadResult {
        var buffer = [UInt8](repeating: 0, count: max)
        let count = buffer.withUnsafeMutableBytes { Glibc.recv(self.fd, $0.baseAddress, max, Int32(MSG_DONTWAIT)) }
        if count > 0 { return .data(Array(buffer[0..<count])) }
        if count == 0 { return .end(.eof) }
        let code = errno
        if code == EAGAIN || code == EWOULDBLOCK || code == EINTR { return .end(.timeout) }
        if code == ECONNRESET { return .end(.reset) }
        return .end(.error(code))
    }

    /// Waits up to `timeout` for data, EOF or reset.
    func recv(max: Int = 65536, timeout: Double) throws -> ReadResult {
        let deadline = now() + timeout
        while true {
            let result = self.tryRecv(max: max)
            if result != .end(.timeout) { return result }
            let remaining = deadline - now()
            if remaining <= 0 { return result }
            _ = try self.poll(events: Int16(POLLIN), timeout: remaining)
        }
    }

    /// Exactly `count` bytes, or throws on EOF, reset or timeout.
    func recvExactly(_ count: Int, timeout: Double = 10) throws -> [UInt8] {
        var result: [UInt8] = []
        result.reserveCapacity(count)
        let deadline = now() + timeout
        while result.count < count {
            switch try self.recv(max: min(65536, count - result.count), timeout: max(0, deadline - now())) {
            case .data(let bytes): result.append(contentsOf: bytes)
            case .end(.timeout): throw SocketError.timeout("recvExactly(\(count)) got \(result.count)")
            case .end(let end): throw SocketError.ended("recvExactly(\(count)) got \(result.count)", end)
            }
        }
        return result
    }

    /// Reads until EOF, reset or `timeout`; returns the bytes and how it ended.
    func readToEnd(timeout: Double, limit: Int = 1 << 30) throws -> (bytes: [UInt8], end: StreamEnd) {
        var result: [UInt8] = []
        let deadline = now() + timeout
        while result.count < limit {
            switch try self.recv(timeout: max(0, deadline - now())) {
            case .data(let bytes): result.append(contentsOf: bytes)
            case .end(let end): return (result, end)
            }
        }
        return (result, .timeout)
    }

    /// Like `readToEnd` but only counts (and can verify with `check`) the bytes, for big transfers.
    func drainToEnd(timeout: Double, check: ((ArraySlice<UInt8>, Int) -> Void)? = nil) throws -> (count: Int, end: StreamEnd) {
        var total = 0
        let deadline = now() + timeout
        while true {
            switch try self.recv(max: 1 << 20, timeout: max(0, deadline - now())) {
            case .data(let bytes):
                check?(bytes[...], total)
                total += bytes.count
            case .end(let end): return (total, end)
            }
        }
    }

    /// Async: discards incoming bytes until EOF/reset or the deadline, sleeping between polls.
    func waitForEnd(timeout: Double) async -> (count: Int, end: StreamEnd) {
        let deadline = now() + timeout
        var total = 0
        while true {
            switch self.tryRecv() {
            case .data(let bytes): total += bytes.count; continue
            case .end(.timeout):
                if now() >= deadline { return (total, .timeout) }
                try? await Task.sleep(nanoseconds: 5_000_000)
            case .end(let end): return (total, end)
            }
        }
    }

    /// Without consuming data: EOF/reset if the peer already ended the stream, else nil.
    func peekEnd() -> StreamEnd? {
        var byte: UInt8 = 0
        let count = Glibc.recv(self.fd, &byte, 1, Int32(MSG_PEEK) | Int32(MSG_DONTWAIT))
        if count == 0 { return .eof }
        if count > 0 { return nil }
        let code = errno
        if code == EAGAIN || code == EWOULDBLOCK { return nil }
        return code == ECONNRESET ? .reset : .error(code)
    }
}

/// Runs blocking work on its own thread, so a test's task does not hold one of the few
/// cooperative threads while it waits. Use with `async let` for concurrent work.
func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread { continuation.resume(with: Result { try body() }) }
        thread.stackSize = 1 << 20
        thread.start()
    }
}

/// Sleeps without holding a thread.
func delay(seconds: Double) async {
    try? await Task.sleep(nanoseconds: UInt64(seconds * 1e9))
}

/// Whether this machine can bind ::1.
let ipv6LoopbackAvailable: Bool = {
    guard let fd = try? TestSocket.makeSocket(family: AF_INET6) else { return false }
    defer { Glibc.close(fd) }
    return (try? TestSocket.withAddress(host: "::1", port: 0) { address, length, _ in bind(fd, address, length) == 0 }) ?? false
}()
