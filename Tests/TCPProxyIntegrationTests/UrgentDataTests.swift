import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// TCP urgent data (`send(MSG_OOB)`, as telnet's interrupt and FTP's abort send it): reads stop short at the
/// urgent mark and splice(2) stops there for good. The bytes around the mark must still pass, in order and
/// without waiting for more; the urgent byte itself is not part of the stream and is dropped, as a plain
/// read(2) without `SO_OOBINLINE` drops it (and as NIO's bridge does).
@Suite("Urgent data", .ownThread)
struct UrgentDataTests {
    /// How the sender sends the bytes, the urgent byte and the rest.
    enum Burst: String, CaseIterable, CustomTestStringConvertible {
        /// All in one segment (corked), the stream left open: the proxy's read meets the mark with bytes
        /// ahead of it.
        case corked
        /// The same, then the FIN.
        case corkedThenFIN
        /// Three writes and the FIN as they come: the FIN can arrive before the proxy's event for the urgent
        /// data is handled, and splice(2) then returns 0 at the mark.
        case writesThenFIN

        var testDescription: String { self.rawValue }
        var corked: Bool { self != .writesThenFIN }
        var thenFIN: Bool { self != .corked }
    }

    @Test(
        "bytes before and after an urgent byte all pass at once, in order, with or without a FIN right after",
        .serialized,
        arguments: DataPath.allCases, Burst.allCases
    )
    func aroundTheMark(path: DataPath, burst: Burst) async throws {
        let pair = try await EndOfStreamTests.Pair.open(path.arguments)
        defer { pair.close() }
        let before = [UInt8](repeating: UInt8(ascii: "A"), count: 1000)
        let after = [UInt8](repeating: UInt8(ascii: "B"), count: 1000)

        for (direction, sender, receiver) in [("upstream", pair.client, pair.upstream), ("downstream", pair.upstream, pair.client)] {
            var on: Int32 = 1
            var off: Int32 = 0
            if burst.corked { setsockopt(sender.fd, Int32(IPPROTO_TCP), TCP_CORK, &on, socklen_t(MemoryLayout<Int32>.size)) }
            try sender.send(before)
            var urgent = UInt8(ascii: "X")
            #expect(Glibc.send(sender.fd, &urgent, 1, Int32(MSG_OOB)) == 1)
            try sender.send(after)
            if burst.corked { setsockopt(sender.fd, Int32(IPPROTO_TCP), TCP_CORK, &off, socklen_t(MemoryLayout<Int32>.size)) }
            if burst.thenFIN { sender.shutdownWrite() }

            let received = try await onThread { try receiver.recvExactly(2000, timeout: 5) }
            #expect(received == before + after, "\(direction)")
        }
        if burst.thenFIN {
            // A FIN each way, not a reset: no urgent byte was left unread in a socket the proxy closed.
            for (direction, receiver) in [("upstream", pair.upstream), ("downstream", pair.client)] {
                let rest = try await onThread { try receiver.readToEnd(timeout: 5) }
                #expect(rest.bytes.isEmpty && rest.end == .eof, "\(direction): the FIN passed after the bytes")
            }
            let closed = try #require(await pair.proxy.waitForLine(containing: "bridge closed", timeout: 5))
            #expect(logValue("close.reason", in: closed) == "completed")
            #expect(logValue("bytes.upstream", in: closed) == "2000")
            #expect(logValue("bytes.downstream", in: closed) == "2000")
        }
    }
}
