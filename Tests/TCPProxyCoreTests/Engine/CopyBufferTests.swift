import Testing

@testable import TCPProxyCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

@Suite("Copy buffer (read(2)/write(2) through the thread's scratch buffer, real sockets)")
struct CopyBufferTests {
    static let capacity = 65536

    @Test("bytes read into the scratch and written in full leave the buffer holding no memory")
    func passesThroughScratch() throws {
        let scratch = CopyScratch(capacity: Self.capacity)
        let source = try SocketPair()
        let sink = try SocketPair()
        let buffer = CopyBuffer(capacity: Self.capacity)
        #expect(!buffer.holdsMemory)

        source.send(Array("hello, bridge".utf8))
        #expect(buffer.receive(from: source.near, max: Self.capacity, scratch: scratch) == .moved(13))
        #expect(!buffer.holdsMemory, "the bytes wait in the scratch buffer, not in memory of the buffer's own")
        #expect(buffer.send(to: sink.near, max: Self.capacity) == .moved(13))
        #expect(!buffer.holdsMemory)
        #expect(sink.receiveAll() == Array("hello, bridge".utf8))

        #expect(buffer.receive(from: source.near, max: Self.capacity, scratch: scratch) == .wouldBlock)
        #expect(!buffer.holdsMemory)
    }

    @Test("a sink that refuses part: exactly the rest is kept, in order, and survives the scratch being reused")
    func keepsTheRest() throws {
        let scratch = CopyScratch(capacity: Self.capacity)
        let source = try SocketPair()
        // A small send buffer: the sink takes a few KiB of the 60 000 bytes, no more.
        let sink = try SocketPair(nearSendBuffer: 4096)
        let buffer = CopyBuffer(capacity: Self.capacity)
        let first = pattern(60_000, seed: 1)

        source.send(first)
        #expect(buffer.receive(from: source.near, max: Self.capacity, scratch: scratch) == .moved(first.count))
        guard case .moved(let taken) = buffer.send(to: sink.near, max: first.count) else {
            Issue.record("the sink took nothing")
            return
        }
        #expect(taken > 0 && taken < first.count, "test precondition: a short write (\(taken) of \(first.count))")
        #expect(buffer.holdsMemory, "the refused bytes are copied out of the scratch buffer")

        // Another bridge of the same thread reads into the same scratch buffer and writes it all.
        let otherSource = try SocketPair()
        let otherSink = try SocketPair()
        let other = CopyBuffer(capacity: Self.capacity)
        let second = pattern(60_000, seed: 2)
        otherSource.send(second)
        #expect(other.receive(from: otherSource.near, max: Self.capacity, scratch: scratch) == .moved(second.count))
        #expect(other.send(to: otherSink.near, max: second.count) == .moved(second.count))
        #expect(!other.holdsMemory)
        #expect(mismatch(otherSink.receiveAll(), second) == nil)

        // The sink now has room for everything: exactly the rest goes, unchanged by the other bridge.
        var delivered = sink.receiveAll()
        sink.setNearSendBuffer(1 << 20)
        #expect(buffer.send(to: sink.near, max: first.count - taken) == .moved(first.count - taken))
        delivered += sink.receiveAll()
        #expect(delivered.count == first.count)
        #expect(mismatch(delivered, first) == nil, "every byte, in order")
        #expect(!buffer.holdsMemory, "a short read emptied the source, so the memory goes once drained")
    }

    @Test("bytes read while some are held go behind them (the held ones moved to the front first)")
    func appendsBehindHeld() throws {
        let scratch = CopyScratch(capacity: Self.capacity)
        let source = try SocketPair()
        let sink = try SocketPair(nearSendBuffer: 4096)
        let buffer = CopyBuffer(capacity: Self.capacity)
        let first = pattern(30_000, seed: 3)
        let second = pattern(20_000, seed: 4)

        source.send(first)
        #expect(buffer.receive(from: source.near, max: Self.capacity, scratch: scratch) == .moved(first.count))
        guard case .moved(let taken) = buffer.send(to: sink.near, max: first.count) else {
            Issue.record("the sink took nothing")
            return
        }
        #expect(taken < first.count, "test precondition: a short write")
        let held = first.count - taken

        source.send(second)
        #expect(
            buffer.receive(from: source.near, max: Self.capacity - held, scratch: scratch) == .moved(second.count)
        )
        var delivered = sink.receiveAll()
        sink.setNearSendBuffer(1 << 20)
        #expect(buffer.send(to: sink.near, max: held + second.count) == .moved(held + second.count))
        delivered += sink.receiveAll()
        #expect(mismatch(delivered, first + second) == nil)
    }

    @Test("after a read that filled its room the memory is kept until the source has nothing (EAGAIN)")
    func releasedAtWouldBlock() throws {
        let scratch = CopyScratch(capacity: Self.capacity)
        let source = try SocketPair()
        let sink = try SocketPair(nearSendBuffer: 4096)
        let buffer = CopyBuffer(capacity: Self.capacity)
        let bytes = pattern(40_000, seed: 5)

        source.send(bytes)
        // The flow asks for exactly what the source has: a full read, so more may come (bulk).
        #expect(buffer.receive(from: source.near, max: bytes.count, scratch: scratch) == .moved(bytes.count))
        guard case .moved(let taken) = buffer.send(to: sink.near, max: bytes.count) else {
            Issue.record("the sink took nothing")
            return
        }
        #expect(taken < bytes.count, "test precondition: a short write")
        var delivered = sink.receiveAll()
        sink.setNearSendBuffer(1 << 20)
        #expect(buffer.send(to: sink.near, max: bytes.count - taken) == .moved(bytes.count - taken))
        delivered += sink.receiveAll()
        #expect(mismatch(delivered, bytes) == nil)
        #expect(buffer.holdsMemory, "drained after a full read: the memory is kept for the next read")

        #expect(buffer.receive(from: source.near, max: Self.capacity, scratch: scratch) == .wouldBlock)
        #expect(!buffer.holdsMemory, "the source had nothing: the memory is released")
    }

    @Test("a sink that refuses everything (EAGAIN): would block, and every byte is kept")
    func sinkFull() throws {
        let scratch = CopyScratch(capacity: Self.capacity)
        let source = try SocketPair()
        let sink = try SocketPair(nearSendBuffer: 4096)
        let buffer = CopyBuffer(capacity: Self.capacity)
        let filled = sink.fillNear()
        #expect(filled > 0)
        let bytes = pattern(10_000, seed: 6)

        source.send(bytes)
        #expect(buffer.receive(from: source.near, max: Self.capacity, scratch: scratch) == .moved(bytes.count))
        #expect(buffer.send(to: sink.near, max: bytes.count) == .wouldBlock)
        #expect(buffer.holdsMemory)
        // Overwrite the scratch buffer, as the next bridge's read would.
        let otherSource = try SocketPair()
        otherSource.send(pattern(Self.capacity, seed: 7))
        let other = CopyBuffer(capacity: Self.capacity)
        #expect(other.receive(from: otherSource.near, max: Self.capacity, scratch: scratch) == .moved(Self.capacity))
        other.discard()

        #expect(sink.receiveAll().count == filled)
        sink.setNearSendBuffer(1 << 20)
        #expect(buffer.send(to: sink.near, max: bytes.count) == .moved(bytes.count))
        #expect(mismatch(sink.receiveAll(), bytes) == nil)
        #expect(!buffer.holdsMemory)
    }

    @Test("EOF from the source is endOfStream and releases nothing still held")
    func endOfStream() throws {
        let scratch = CopyScratch(capacity: Self.capacity)
        let source = try SocketPair()
        let sink = try SocketPair(nearSendBuffer: 4096)
        let buffer = CopyBuffer(capacity: Self.capacity)

        source.shutdownFar()
        #expect(buffer.receive(from: source.near, max: Self.capacity, scratch: scratch) == .endOfStream)
        #expect(!buffer.holdsMemory)

        // Bytes then EOF, with the sink refusing part: EOF keeps what is held until it is written.
        let other = try SocketPair()
        let bytes = pattern(30_000, seed: 8)
        other.send(bytes)
        other.shutdownFar()
        #expect(buffer.receive(from: other.near, max: Self.capacity, scratch: scratch) == .moved(bytes.count))
        guard case .moved(let taken) = buffer.send(to: sink.near, max: bytes.count) else {
            Issue.record("the sink took nothing")
            return
        }
        #expect(taken < bytes.count, "test precondition: a short write")
        #expect(buffer.receive(from: other.near, max: Self.capacity - (bytes.count - taken), scratch: scratch) == .endOfStream)
        #expect(buffer.holdsMemory, "held bytes outlive the source's EOF")
        var delivered = sink.receiveAll()
        sink.setNearSendBuffer(1 << 20)
        #expect(buffer.send(to: sink.near, max: bytes.count - taken) == .moved(bytes.count - taken))
        delivered += sink.receiveAll()
        #expect(mismatch(delivered, bytes) == nil)
        #expect(!buffer.holdsMemory)
    }

    @Test("a reset source is failed(ECONNRESET); a sink whose peer is gone is failed(EPIPE)")
    func failures() throws {
        let scratch = CopyScratch(capacity: Self.capacity)
        let buffer = CopyBuffer(capacity: Self.capacity)

        // AF_UNIX: closing an end that has unread bytes resets its peer.
        let source = try SocketPair()
        _ = [UInt8](repeating: 1, count: 10).withUnsafeBytes { write(source.near, $0.baseAddress, $0.count) }
        source.closeFar()
        #expect(buffer.receive(from: source.near, max: Self.capacity, scratch: scratch) == .failed(ECONNRESET))
        #expect(!buffer.holdsMemory)

        let other = try SocketPair()
        let sink = try SocketPair()
        other.send(pattern(100, seed: 9))
        sink.closeFar()
        #expect(buffer.receive(from: other.near, max: Self.capacity, scratch: scratch) == .moved(100))
        #expect(buffer.send(to: sink.near, max: 100) == .failed(EPIPE))
        buffer.discard()
        #expect(!buffer.holdsMemory, "discard lets go of what a failed bridge held")
    }

    @Test("through a DirectFlow: a request is copied whole and the idle direction keeps no memory")
    func flowOverCopy() throws {
        let scratch = CopyScratch(capacity: Self.capacity)
        let source = try SocketPair()
        let sink = try SocketPair(nearSendBuffer: 4096)
        let buffer = CopyBuffer(capacity: Self.capacity)
        let io = CopyDirectionIO(source: source.near, buffer: buffer, sink: sink.near, scratch: scratch)
        var flow = DirectFlow(capacity: Self.capacity)

        source.send(Array("GET / HTTP/1.1\r\n\r\n".utf8))
        #expect(flow.pump(io, stopAtShortRead: true) == .blocked)
        #expect(flow.held == 0 && flow.moved == 18)
        #expect(!buffer.holdsMemory)
        #expect(sink.receiveAll() == Array("GET / HTTP/1.1\r\n\r\n".utf8))

        // The sink refuses most of a larger burst: the flow holds the rest, the buffer keeps it in memory.
        let burst = pattern(50_000, seed: 10)
        source.send(burst)
        #expect(flow.pump(io, stopAtShortRead: true) == .blocked)
        #expect(flow.held > 0 && flow.held < burst.count)
        #expect(buffer.holdsMemory)
        var delivered = sink.receiveAll()
        sink.setNearSendBuffer(1 << 20)
        #expect(flow.pump(io, stopAtShortRead: true) == .blocked)
        delivered += sink.receiveAll()
        #expect(mismatch(delivered, burst) == nil)
        #expect(flow.held == 0)
        #expect(!buffer.holdsMemory, "idle again: nothing held")

        source.shutdownFar()
        #expect(flow.pump(io, stopAtShortRead: false) == .blocked)
        #expect(flow.isFinished, "EOF became SHUT_WR on the sink")
        var byte: UInt8 = 0
        #expect(read(sink.far, &byte, 1) == 0, "the sink's peer sees EOF")
    }
}
