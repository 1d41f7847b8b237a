#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A socket call failed, or a peer took longer than the deadline.
struct LoopbackSocketError: Error, CustomStringConvertible {
    /// What was being done, e.g. `connect`.
    var operation: StaticString
    /// `errno` after the call; 0 for a missed deadline or an early EOF.
    var code: Int32

    var description: String {
        switch self.code {
        case 0: "\(self.operation): deadline passed or peer closed"
        default: "\(self.operation): \(String(cString: strerror(self.code)))"
        }
    }
}

/// A monotonic deadline that costs no allocation to read (`clock_gettime`), so loops in the measured
/// region can be bounded in time.
struct Deadline {
    private var nanoseconds: UInt64

    /// - Parameter seconds: how far from now.
    init(secondsFromNow seconds: UInt64) {
        self.nanoseconds = Deadline.now() + seconds * 1_000_000_000
    }

    var hasPassed: Bool { Deadline.now() >= self.nanoseconds }

    static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }
}

/// One non-blocking TCP socket on 127.0.0.1, driven with plain system calls and `poll(2)`.
///
/// The benchmarks' clients and servers use these instead of NIO so that they allocate nothing per chunk
/// themselves: every malloc counted in the measured region is the proxy's (or the harness's fixed cost,
/// which the direct, no-proxy benchmarks show is zero). Every wait is bounded by a ``Deadline``.
struct LoopbackSocket {
    let fd: Int32

    /// How long any one transfer may wait for its peer before the benchmark fails.
    static let timeoutSeconds: UInt64 = 10

    private init(fd: Int32) {
        self.fd = fd
    }

    /// A listening socket on 127.0.0.1 and an ephemeral port.
    static func listen() throws -> (socket: LoopbackSocket, port: Int) {
        let socket = try LoopbackSocket(fd: Self.check("socket", Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)))
        var reuse: Int32 = 1
        setsockopt(socket.fd, SOL_SOCKET, SO_REUSEADDR, &reuse, socklen_t(MemoryLayout<Int32>.size))
        var address = Self.loopback(port: 0)
        try withUnsafePointer(to: &address) { pointer in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sockaddrPointer in
                _ = try Self.check("bind", bind(socket.fd, sockaddrPointer, socklen_t(MemoryLayout<sockaddr_in>.size)))
            }
        }
        _ = try Self.check("listen", Glibc.listen(socket.fd, 1024))
        var bound = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        try withUnsafeMutablePointer(to: &bound) { pointer in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sockaddrPointer in
                _ = try Self.check("getsockname", getsockname(socket.fd, sockaddrPointer, &length))
            }
        }
        socket.setNonBlocking()
        return (socket, Int(UInt16(bigEndian: bound.sin_port)))
    }

    /// A connected client socket (the connect itself is blocking: on loopback it completes at once or fails).
    static func connect(port: Int) throws -> LoopbackSocket {
        let socket = try LoopbackSocket(fd: Self.check("socket", Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)))
        var address = Self.loopback(port: port)
        let result = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sockaddrPointer in
                Glibc.connect(socket.fd, sockaddrPointer, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        if result != 0 {
            let code = errno
            socket.close()
            throw LoopbackSocketError(operation: "connect", code: code)
        }
        socket.setNoDelay()
        socket.setNonBlocking()
        return socket
    }

    /// The next connection on this listening socket, waiting for it up to the timeout.
    func accept() throws -> LoopbackSocket {
        let deadline = Deadline(secondsFromNow: Self.timeoutSeconds)
        while true {
            let fd = Glibc.accept(self.fd, nil, nil)
            if fd >= 0 {
                let socket = LoopbackSocket(fd: fd)
                socket.setNoDelay()
                socket.setNonBlocking()
                return socket
            }
            guard errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR else {
                throw LoopbackSocketError(operation: "accept", code: errno)
            }
            try self.wait(for: Int16(POLLIN), until: deadline, "accept")
        }
    }

    func close() {
        _ = Glibc.close(self.fd)
    }

    /// `shutdown(SHUT_WR)`: the peer reads EOF.
    func shutdownOutput() {
        _ = Glibc.shutdown(self.fd, Int32(SHUT_WR))
    }

    /// Writes all of `bytes`, waiting while the socket is full.
    func writeAll(_ bytes: UnsafeRawBufferPointer) throws {
        let deadline = Deadline(secondsFromNow: Self.timeoutSeconds)
        var offset = 0
        while offset < bytes.count {
            let written = Glibc.write(self.fd, bytes.baseAddress! + offset, bytes.count - offset)
            if written > 0 {
                offset += written
            } else if written < 0, errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR {
                try self.wait(for: Int16(POLLOUT), until: deadline, "write")
            } else {
                throw LoopbackSocketError(operation: "write", code: errno)
            }
        }
    }

    /// Reads exactly `buffer.count` bytes into `buffer`.
    func readExactly(into buffer: UnsafeMutableRawBufferPointer) throws {
        let deadline = Deadline(secondsFromNow: Self.timeoutSeconds)
        var offset = 0
        while offset < buffer.count {
            let count = Glibc.read(self.fd, buffer.baseAddress! + offset, buffer.count - offset)
            if count > 0 {
                offset += count
            } else if count == 0 {
                throw LoopbackSocketError(operation: "read (early EOF)", code: 0)
            } else if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR {
                try self.wait(for: Int16(POLLIN), until: deadline, "read")
            } else {
                throw LoopbackSocketError(operation: "read", code: errno)
            }
        }
    }

    /// Reads and discards until the peer's EOF.
    func readUntilEOF(scratch: UnsafeMutableRawBufferPointer) throws {
        let deadline = Deadline(secondsFromNow: Self.timeoutSeconds)
        while true {
            let count = Glibc.read(self.fd, scratch.baseAddress!, scratch.count)
            if count == 0 { return }
            if count > 0 { continue }
            guard errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR else {
                throw LoopbackSocketError(operation: "read until EOF", code: errno)
            }
            try self.wait(for: Int16(POLLIN), until: deadline, "read until EOF")
        }
    }

    /// Reads what is there without waiting; returns the byte count (0 when nothing is there yet).
    func readAvailable(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let count = Glibc.read(self.fd, buffer.baseAddress!, buffer.count)
        if count > 0 { return count }
        if count == 0 { throw LoopbackSocketError(operation: "read (early EOF)", code: 0) }
        guard errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR else {
            throw LoopbackSocketError(operation: "read", code: errno)
        }
        return 0
    }

    /// Writes what fits without waiting; returns the byte count.
    func writeAvailable(_ bytes: UnsafeRawBufferPointer) throws -> Int {
        let written = Glibc.write(self.fd, bytes.baseAddress!, bytes.count)
        if written >= 0 { return written }
        guard errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR else {
            throw LoopbackSocketError(operation: "write", code: errno)
        }
        return 0
    }

    /// Waits until this socket is ready for `events` (a `poll` with a 1 s slice), or throws at `deadline`.
    private func wait(for events: Int16, until deadline: Deadline, _ operation: StaticString) throws {
        var descriptor = pollfd(fd: self.fd, events: events, revents: 0)
        _ = poll(&descriptor, 1, 1000)
        if deadline.hasPassed { throw LoopbackSocketError(operation: operation, code: 0) }
    }

    private func setNonBlocking() {
        let flags = fcntl(self.fd, F_GETFL)
        _ = fcntl(self.fd, F_SETFL, flags | O_NONBLOCK)
    }

    private func setNoDelay() {
        var on: Int32 = 1
        setsockopt(self.fd, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
    }

    private static func loopback(port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian  // 127.0.0.1 only
        return address
    }

    private static func check(_ operation: StaticString, _ result: Int32) throws -> Int32 {
        guard result >= 0 else { throw LoopbackSocketError(operation: operation, code: errno) }
        return result
    }
}

/// Streams bytes from `sender` to `receiver` in one thread: each ``send(_:)`` puts one chunk into the
/// sender socket, reading whatever has reached the receiver while the sender is full; ``finish()`` waits for
/// the rest. The proxy between them sees a continuous stream with back-pressure, not lock-step chunks.
struct StreamPump {
    let sender: LoopbackSocket
    let receiver: LoopbackSocket
    let receiveBuffer: UnsafeMutableRawBufferPointer
    private(set) var sent = 0
    private(set) var received = 0

    init(sender: LoopbackSocket, receiver: LoopbackSocket, receiveBuffer: UnsafeMutableRawBufferPointer) {
        self.sender = sender
        self.receiver = receiver
        self.receiveBuffer = receiveBuffer
    }

    /// Writes all of `chunk` to the sender, draining the receiver whenever the sender is full.
    mutating func send(_ chunk: UnsafeRawBufferPointer) throws {
        let deadline = Deadline(secondsFromNow: LoopbackSocket.timeoutSeconds)
        var offset = 0
        while offset < chunk.count {
            let written = try self.sender.writeAvailable(UnsafeRawBufferPointer(rebasing: chunk[offset...]))
            offset += written
            if written == 0 {
                if try self.drain() == 0 { try self.waitForEither(until: deadline) }
            }
        }
        self.sent += chunk.count
        _ = try self.drain()
    }

    /// Reads until everything sent has arrived.
    mutating func finish() throws {
        let deadline = Deadline(secondsFromNow: LoopbackSocket.timeoutSeconds)
        while self.received < self.sent {
            if try self.drain() == 0 { try self.waitForEither(until: deadline) }
        }
    }

    private mutating func drain() throws -> Int {
        var total = 0
        while true {
            let count = try self.receiver.readAvailable(into: self.receiveBuffer)
            if count == 0 { return total }
            total += count
            self.received += count
        }
    }

    private func waitForEither(until deadline: Deadline) throws {
        var descriptors = (
            pollfd(fd: self.sender.fd, events: Int16(POLLOUT), revents: 0),
            pollfd(fd: self.receiver.fd, events: Int16(POLLIN), revents: 0)
        )
        withUnsafeMutableBytes(of: &descriptors) { raw in
            _ = poll(raw.baseAddress!.assumingMemoryBound(to: pollfd.self), 2, 1000)
        }
        if deadline.hasPassed { throw LoopbackSocketError(operation: "stream", code: 0) }
    }
}
