import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Deterministic pseudo-random bytes (xorshift64), so transfers can be checked byte for byte.
func pattern(count: Int, seed: UInt64) -> [UInt8] {
    var state = (seed &+ 1) &* 0x9E37_79B9_7F4A_7C15
    let words = (count + 7) / 8
    var bytes = [UInt8](repeating: 0, count: words * 8)
    bytes.withUnsafeMutableBytes { raw in
        let output = raw.bindMemory(to: UInt64.self)
        for index in 0..<words {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            output[index] = state
        }
    }
    bytes.removeLast(words * 8 - count)
    return bytes
}

/// Byte-for-byte equality via memcmp (fast even in debug builds).
func sameBytes(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    return a.withUnsafeBytes { x in b.withUnsafeBytes { y in memcmp(x.baseAddress!, y.baseAddress!, a.count) == 0 } }
}

/// Where two byte arrays first differ (nil when equal), for failure messages.
func firstDifference(_ a: [UInt8], _ b: [UInt8]) -> Int? {
    if sameBytes(a, b) { return nil }
    for index in 0..<min(a.count, b.count) where a[index] != b[index] { return index }
    return min(a.count, b.count)
}

/// A lock-protected value shared between a test task and its helper threads.
final class Shared<Value: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Value
    init(_ value: Value) { self.stored = value }
    var value: Value {
        get { self.lock.withLock { self.stored } }
        set { self.lock.withLock { self.stored = newValue } }
    }
    func update<R>(_ body: (inout Value) -> R) -> R { self.lock.withLock { body(&self.stored) } }
}

func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

let megabyte = 1 << 20

/// A port on 127.0.0.1 where nothing listens, so connects to it are refused at once. Port 1 is below the
/// ephemeral range: no test server (bound to port 0) can ever be given it, unlike a port that was just
/// bound and closed, which a test running in parallel may get for its own server.
let refusedPort = 1
