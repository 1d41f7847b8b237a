#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The memory a direct-engine thread reads into: one buffer for every bridge it serves, since a bridge
/// only keeps bytes of its own when its sink refuses some (see ``CopyBuffer``).
final class CopyScratch {
    private(set) var bytes: UnsafeMutableRawBufferPointer

    init(capacity: Int = 64 * 1024) {
        self.bytes = .allocate(byteCount: capacity, alignment: 16)
    }

    /// Makes room for reads of up to `count` bytes (a listener with a larger `--high-water-mark`).
    func reserve(_ count: Int) {
        guard count > self.bytes.count else { return }
        self.bytes.deallocate()
        self.bytes = .allocate(byteCount: count, alignment: 16)
    }

    deinit { self.bytes.deallocate() }
}

/// One direction's buffer when the direct engine moves bytes through user space with read(2) and
/// write(2), the cheaper way for small exchanges.
///
/// A read lands in the engine thread's ``CopyScratch`` and is written on at once; only what the sink
/// refuses is copied into memory of the bridge's own, which goes away again once the source has nothing
/// more to read. An idle bridge holds no buffer at all.
final class CopyBuffer {
    /// Memory of this direction's own, while it is busy; `nil` otherwise.
    private var own: UnsafeMutableRawBufferPointer?
    /// Where held bytes begin, in `own` or (between a read and its write) the borrowed memory.
    private var start = 0
    /// Bytes held.
    private var count = 0
    /// Memory that is not ours holding the bytes between a read and its write: the scratch buffer, or an
    /// ``IOBatch`` slice. `nil` when the held bytes (if any) are in `own`.
    private var borrowed: UnsafeMutableRawPointer?
    /// Whether the last read filled all the room it had (bulk: keep the memory for the next one).
    private var lastReadFull = false
    /// The most bytes held (the flow's capacity).
    let capacity: Int

    init(capacity: Int) {
        self.capacity = capacity
    }

    /// Whether the direction has memory of its own right now.
    var holdsMemory: Bool { self.own != nil }

    deinit { self.own?.deallocate() }

    /// Reads up to `max` bytes from `source` behind what is held.
    func receive(from source: CInt, max: Int, scratch: CopyScratch) -> FlowStep {
        let result: Int
        if self.count == 0, self.own == nil {
            let room = Swift.min(max, scratch.bytes.count)
            result = read(source, scratch.bytes.baseAddress, room)
            self.lastReadFull = result == room
            if result > 0 {
                self.start = 0
                self.borrowed = scratch.bytes.baseAddress
            }
        } else {
            self.keepBorrowed()
            let own = self.ownMemory()
            if self.start > 0 && self.count > 0 {
                own.baseAddress!.copyMemory(from: own.baseAddress! + self.start, byteCount: self.count)
            }
            self.start = 0
            let room = Swift.min(max, own.count - self.count)
            result = read(source, own.baseAddress! + self.count, room)
            self.lastReadFull = result == room
        }
        if result > 0 {
            self.count += result
            return .moved(result)
        }
        if result == 0 {
            self.release()
            return .endOfStream
        }
        let step = FlowStep(error: errno)
        if step == .wouldBlock { self.release() }
        return step
    }

    /// Writes up to `max` held bytes to `sink`; what it refuses stays, in memory of this direction's own.
    /// With `more`, a last part smaller than a segment waits for what follows (the FIN; `MSG_MORE`).
    func send(to sink: CInt, max: Int, more: Bool = false) -> FlowStep {
        let base = self.borrowed ?? self.own!.baseAddress!
        let result = sendBytes(sink, base + self.start, Swift.min(max, self.count), more: more)
        return self.settle(written: result, error: result > 0 ? 0 : errno)
    }

    /// Takes on `count` bytes an ``IOBatch`` read into `memory` for this direction, as ``receive(from:max:scratch:)``
    /// would have read them with `room` to fill. Only when nothing is held.
    func adoptReceived(_ count: Int, at memory: UnsafeMutableRawPointer, room: Int) {
        precondition(self.count == 0 && self.borrowed == nil, "a batch reads only for a direction that holds nothing")
        self.start = 0
        self.count = count
        self.borrowed = memory
        self.lastReadFull = count == room
    }

    /// Takes on what an ``IOBatch`` write of the held bytes returned (bytes, or -errno), as
    /// ``send(to:max:scratch:)`` would have.
    func adoptSent(_ result: Int32) -> FlowStep {
        self.settle(written: result > 0 ? Int(result) : -1, error: result > 0 ? 0 : (result == 0 ? EAGAIN : -result))
    }

    /// Accounts for a write of the held bytes that wrote `written` (or failed with `error`).
    private func settle(written: Int, error: CInt) -> FlowStep {
        let step: FlowStep
        if written > 0 {
            self.start += written
            self.count -= written
            step = .moved(written)
        } else {
            step = FlowStep(error: error)
        }
        // The borrowed memory is the next read's: keep what is left in memory of our own.
        self.keepBorrowed()
        if self.count == 0 {
            self.start = 0
            // A short read emptied the source: the flow reads no more this time, so let go now.
            if !self.lastReadFull { self.release() }
        }
        return step
    }

    /// Moves held bytes out of borrowed memory into memory of our own.
    private func keepBorrowed() {
        guard let borrowed = self.borrowed else { return }
        if self.count > 0 {
            let own = self.ownMemory()
            own.baseAddress!.copyMemory(from: borrowed + self.start, byteCount: self.count)
        }
        self.start = 0
        self.borrowed = nil
    }

    /// Lets go of the memory of its own when nothing is held (the source had nothing more).
    private func release() {
        guard self.count == 0, let own = self.own else { return }
        own.deallocate()
        self.own = nil
        self.start = 0
    }

    private func ownMemory() -> UnsafeMutableRawBufferPointer {
        if let own = self.own { return own }
        let own = UnsafeMutableRawBufferPointer.allocate(byteCount: self.capacity, alignment: 16)
        self.own = own
        return own
    }

    /// Drops what is held and the memory (the bridge ended).
    func discard() {
        self.count = 0
        self.borrowed = nil
        self.release()
    }
}

/// send(2), with `MSG_MORE` when `more` (where the system has it).
private func sendBytes(_ socket: CInt, _ bytes: UnsafeRawPointer, _ count: Int, more: Bool) -> Int {
    #if os(Linux)
    send(socket, bytes, count, more ? CInt(MSG_MORE) : 0)
    #else
    send(socket, bytes, count, 0)
    #endif
}

/// The real ``FlowIO`` of one direction on the copy path: read(2) and write(2) through a ``CopyBuffer``.
///
/// With a batch slot, the first read and the first write are the ones the ``IOBatch`` already made: their
/// results are replayed, and every later call is made as usual.
struct CopyDirectionIO: FlowIO {
    let source: CInt
    let buffer: CopyBuffer
    let sink: CInt
    let scratch: CopyScratch
    var batched: BatchSlot? = nil

    func fill(max count: Int) -> FlowStep {
        if let batched, let result = batched.batch.takeReceived(batched.slot) {
            return self.replayReceive(result, from: batched, room: count)
        }
        return self.buffer.receive(from: self.source, max: count, scratch: self.scratch)
    }

    func drain(max count: Int, finishing: Bool) -> FlowStep {
        if let batched, let result = batched.batch.takeSent(batched.slot) {
            return self.buffer.adoptSent(result)
        }
        return self.buffer.send(to: self.sink, max: count, more: finishing)
    }

    /// What a read of up to `room` bytes returned, given the batch's read of `result` into the slot's slice.
    private func replayReceive(_ result: Int32, from batched: BatchSlot, room: Int) -> FlowStep {
        guard result > 0 else {
            return result == 0 ? .endOfStream : FlowStep(error: -result)
        }
        let count = Int(result)
        self.buffer.adoptReceived(count, at: batched.batch.slice(batched.slot), room: room)
        // A read that filled a slice smaller than the room says nothing of what is left: read on, so that the
        // flow sees one read of up to `room` (a short one still means the socket was emptied).
        guard count == batched.batch.length(batched.slot), count < room else { return .moved(count) }
        switch self.buffer.receive(from: self.source, max: room - count, scratch: self.scratch) {
        case .moved(let more):
            return .moved(count + more)
        case .failed(let error):
            return .failed(error)
        case .wouldBlock, .endOfStream:
            // EOF is read again by the next pump (a read of 0 repeats); its event is still to come.
            return .moved(count)
        }
    }

    func shutdownSink() -> CInt? {
        shutdown(self.sink, CInt(SHUT_WR)) == 0 ? nil : errno
    }
}
