import Testing

@testable import TCPProxyCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One direction served through an ``IOBatch`` slot: the batch reads and writes, the flow replays.
private struct BatchedDirection {
    let source: SocketPair
    let sink: SocketPair
    let buffer: CopyBuffer
    var flow: DirectFlow

    init(capacity: Int = 65536, sinkSendBuffer: Int32? = nil) throws {
        self.source = try SocketPair()
        self.sink = try SocketPair(nearSendBuffer: sinkSendBuffer)
        self.buffer = CopyBuffer(capacity: capacity)
        self.flow = DirectFlow(capacity: capacity)
    }

    func queue(in batch: IOBatch, slot: Int) -> Bool {
        batch.queueReceive(from: self.source.near, to: self.sink.near, slot: slot, room: self.flow.capacity - self.flow.held)
    }

    /// Pumps as the engine does after a batch (`batched`) or on a plain event (`nil`).
    mutating func pump(_ scratch: CopyScratch, batched: BatchSlot?) -> DirectFlow.Outcome {
        let io = CopyDirectionIO(source: self.source.near, buffer: self.buffer, sink: self.sink.near, scratch: scratch, batched: batched)
        return self.flow.pump(io, stopAtShortRead: true)
    }
}

@Suite("IOBatch (the direct engine's reads and writes batched through io_uring, real sockets)")
struct IOBatchTests {
    static let capacity = 65536

    @Test("io_uring is usable on this machine (the rest of the suite and the engine's fast path rely on it)")
    func available() {
        #expect(IOBatch(capacity: 1) != nil)
    }

    @Test("two directions' reads and writes in one batch: the flows replay them, hold nothing and keep no memory")
    func readsAndWritesSeveralSlots() throws {
        let batch = try #require(IOBatch(capacity: 4))
        let scratch = CopyScratch(capacity: Self.capacity)
        var first = try BatchedDirection()
        var second = try BatchedDirection()
        first.source.send(Array("GET / HTTP/1.1\r\n\r\n".utf8))
        second.source.send(pattern(3000, seed: 2))

        #expect(first.queue(in: batch, slot: 0))
        #expect(second.queue(in: batch, slot: 3))
        #expect(batch.run())
        // The batch already moved the bytes; the flows only account for them.
        #expect(first.sink.receiveAll() == Array("GET / HTTP/1.1\r\n\r\n".utf8))
        #expect(second.sink.receiveAll() == pattern(3000, seed: 2))

        #expect(first.pump(scratch, batched: BatchSlot(batch: batch, slot: 0)) == .blocked)
        #expect(second.pump(scratch, batched: BatchSlot(batch: batch, slot: 3)) == .blocked)
        #expect(first.flow.moved == 18 && first.flow.held == 0)
        #expect(second.flow.moved == 3000 && second.flow.held == 0)
        #expect(!first.buffer.holdsMemory && !second.buffer.holdsMemory)
        #expect(batch.takeReceived(0) == nil && batch.takeSent(0) == nil, "each result is replayed once")
    }

    @Test("a socket with nothing to read completes at once as would-block, and nothing is written")
    func emptySocketWouldBlock() throws {
        let batch = try #require(IOBatch(capacity: 1))
        let scratch = CopyScratch(capacity: Self.capacity)
        var direction = try BatchedDirection()

        #expect(direction.queue(in: batch, slot: 0))
        #expect(batch.run())
        #expect(direction.pump(scratch, batched: BatchSlot(batch: batch, slot: 0)) == .blocked)
        #expect(direction.flow.moved == 0)
        #expect(direction.sink.receiveAll().isEmpty)
    }

    @Test("a sink that refuses part: the rest is kept out of the slice and written, in order, by later pumps")
    func partialWriteKeepsTheRest() throws {
        let batch = try #require(IOBatch(capacity: 2))
        let scratch = CopyScratch(capacity: Self.capacity)
        var direction = try BatchedDirection(sinkSendBuffer: 4096)
        let bytes = pattern(12_000, seed: 3)
        direction.source.send(bytes)

        #expect(direction.queue(in: batch, slot: 1))
        #expect(batch.run())
        #expect(direction.pump(scratch, batched: BatchSlot(batch: batch, slot: 1)) == .blocked)
        #expect(direction.flow.held > 0, "the small send buffer took part of it")
        #expect(direction.buffer.holdsMemory, "what is left moved out of the slice, which the next batch reuses")

        // The next batch reuses the slice: the held bytes must not change.
        var other = try BatchedDirection()
        other.source.send(pattern(16_384, seed: 9))
        #expect(other.queue(in: batch, slot: 1))
        #expect(batch.run())
        #expect(other.pump(scratch, batched: BatchSlot(batch: batch, slot: 1)) == .blocked)

        var delivered = direction.sink.receiveAll()
        direction.sink.setNearSendBuffer(1 << 20)
        for _ in 0..<8 where direction.flow.held > 0 {
            _ = direction.pump(scratch, batched: nil)
            delivered += direction.sink.receiveAll()
        }
        #expect(mismatch(delivered, bytes) == nil)
        #expect(direction.flow.held == 0)
    }

    @Test("a read that fills the slice while the flow has more room is topped up: one read of the room, nothing left")
    func fullSliceIsToppedUp() throws {
        let batch = try #require(IOBatch(capacity: 1))
        let scratch = CopyScratch(capacity: Self.capacity)
        var direction = try BatchedDirection(sinkSendBuffer: 1 << 20)
        let bytes = pattern(40_000, seed: 4)
        direction.source.send(bytes)

        #expect(direction.queue(in: batch, slot: 0))
        #expect(batch.run())
        #expect(batch.length(0) == IOBatch.sliceSize)
        #expect(direction.pump(scratch, batched: BatchSlot(batch: batch, slot: 0)) == .blocked)
        // Had the flow taken the full slice for a short read, the rest would wait for an edge that never comes.
        #expect(direction.flow.moved == 40_000)
        #expect(mismatch(direction.sink.receiveAll(), bytes) == nil)
    }

    @Test("a small high-water mark reads no more than it: a slice is never larger than the room")
    func roomSmallerThanSlice() throws {
        let batch = try #require(IOBatch(capacity: 1))
        let scratch = CopyScratch(capacity: Self.capacity)
        var direction = try BatchedDirection(capacity: 512)
        direction.source.send(pattern(2000, seed: 5))

        #expect(direction.queue(in: batch, slot: 0))
        #expect(batch.length(0) == 512)
        #expect(batch.run())
        _ = direction.pump(scratch, batched: BatchSlot(batch: batch, slot: 0))
        #expect(direction.flow.moved >= 512)
        #expect(direction.flow.held <= 512, "SPEC §2 rule 4 holds on the batched path")
    }

    @Test("EOF read by the batch ends the source and shuts the sink only after what it held")
    func endOfStream() throws {
        let batch = try #require(IOBatch(capacity: 1))
        let scratch = CopyScratch(capacity: Self.capacity)
        var ended = try BatchedDirection()
        ended.source.send([1, 2, 3])
        ended.source.shutdownFar()

        // A short read of the 3 bytes first, then the read that returns 0.
        #expect(ended.queue(in: batch, slot: 0))
        #expect(batch.run())
        _ = ended.pump(scratch, batched: BatchSlot(batch: batch, slot: 0))
        #expect(ended.queue(in: batch, slot: 0))
        #expect(batch.run())
        #expect(ended.pump(scratch, batched: BatchSlot(batch: batch, slot: 0)) == .blocked)
        #expect(ended.flow.isFinished, "EOF became SHUT_WR on the sink")
        #expect(ended.sink.receiveAll() == [1, 2, 3])
        var byte: UInt8 = 0
        #expect(read(ended.sink.far, &byte, 1) == 0, "the sink's peer sees EOF after the bytes")
    }

    @Test("a reset read by the batch is the source's failure")
    func resetFails() throws {
        let batch = try #require(IOBatch(capacity: 1))
        let scratch = CopyScratch(capacity: Self.capacity)
        let sink = try SocketPair()
        let source = try resetTCPSocket()
        defer { close(source) }
        let buffer = CopyBuffer(capacity: Self.capacity)
        var flow = DirectFlow(capacity: Self.capacity)

        #expect(batch.queueReceive(from: source, to: sink.near, slot: 0, room: Self.capacity))
        #expect(batch.run())
        let io = CopyDirectionIO(source: source, buffer: buffer, sink: sink.near, scratch: scratch, batched: BatchSlot(batch: batch, slot: 0))
        #expect(flow.pump(io, stopAtShortRead: true) == .sourceFailed)
    }
}

/// A connected loopback TCP socket (non-blocking) whose peer has closed with a reset (SO_LINGER 0).
private func resetTCPSocket() throws -> CInt {
    let listener = socket(AF_INET, CInt(SOCK_STREAM.rawValue), 0)
    defer { close(listener) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
            bind(listener, pointer, length) == 0 && listen(listener, 1) == 0
                && getsockname(listener, pointer, &length) == 0
        }
    }
    guard bound else { throw SocketPairError(errno: errno) }
    let client = socket(AF_INET, CInt(SOCK_STREAM.rawValue), 0)
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, $0, length) == 0 }
    }
    guard connected else { throw SocketPairError(errno: errno) }
    let accepted = accept(listener, nil, nil)
    guard accepted >= 0 else { throw SocketPairError(errno: errno) }
    var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
    setsockopt(client, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
    close(client)
    _ = fcntl(accepted, F_SETFL, fcntl(accepted, F_GETFL) | O_NONBLOCK)
    // The reset crosses loopback at once; give the stack a moment all the same.
    usleep(10_000)
    return accepted
}
