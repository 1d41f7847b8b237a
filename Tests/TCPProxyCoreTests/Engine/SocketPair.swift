import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A connected `socketpair(AF_UNIX, SOCK_STREAM)`, both ends non-blocking: ``near`` is the end a
/// ``CopyBuffer`` reads from or writes to, ``far`` the test's end. Closed when released.
final class SocketPair {
    private(set) var near: CInt
    private(set) var far: CInt

    /// - Parameter nearSendBuffer: `SO_SNDBUF` for the near end (a small one makes writes into it short).
    init(nearSendBuffer: Int32? = nil) throws {
        // A write into a socket whose peer is gone must fail with EPIPE, not kill the test process.
        signal(SIGPIPE, SIG_IGN)
        var descriptors: [CInt] = [-1, -1]
        guard socketpair(AF_UNIX, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0, &descriptors) == 0 else {
            throw SocketPairError(errno: errno)
        }
        self.near = descriptors[0]
        self.far = descriptors[1]
        for descriptor in descriptors {
            _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
        }
        if let nearSendBuffer { self.setNearSendBuffer(nearSendBuffer) }
    }

    deinit {
        if self.near >= 0 { close(self.near) }
        if self.far >= 0 { close(self.far) }
    }

    func setNearSendBuffer(_ bytes: Int32) {
        var value = bytes
        setsockopt(self.near, SOL_SOCKET, SO_SNDBUF, &value, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Writes all of `bytes` into the far end (they become readable at the near end).
    func send(_ bytes: [UInt8]) {
        let written = bytes.withUnsafeBytes { write(self.far, $0.baseAddress, $0.count) }
        #expect(written == bytes.count, "test precondition: the pair takes \(bytes.count) bytes at once")
    }

    /// Everything readable at the far end now (what the buffer wrote into the near end).
    func receiveAll() -> [UInt8] {
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(self.far, $0.baseAddress, $0.count) }
            guard count > 0 else { return result }
            result += chunk[0..<count]
        }
    }

    /// Fills the near end's send side until it refuses more; returns the bytes written.
    func fillNear() -> Int {
        let junk = [UInt8](repeating: 0xEE, count: 65536)
        var total = 0
        while true {
            let count = junk.withUnsafeBytes { write(self.near, $0.baseAddress, $0.count) }
            guard count > 0 else { return total }
            total += count
        }
    }

    func shutdownFar() { shutdown(self.far, CInt(SHUT_WR)) }

    func closeFar() {
        close(self.far)
        self.far = -1
    }
}

struct SocketPairError: Error { var errno: CInt }

/// Deterministic bytes, different for each seed.
func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 8 &+ Int(seed) &* 101) }
}

/// Where two byte arrays first differ (`nil` when equal): a short failure message instead of two arrays.
func mismatch(_ actual: [UInt8], _ expected: [UInt8]) -> String? {
    guard actual != expected else { return nil }
    let index = zip(actual, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset
        ?? min(actual.count, expected.count)
    return "\(actual.count) bytes, \(expected.count) expected; first difference at \(index)"
}
