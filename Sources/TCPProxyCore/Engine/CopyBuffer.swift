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
    /// Where held bytes begin, in `own` or (between a read and its write) the scratch buffer.
    private var start = 0
    /// Bytes held.
    private var count = 0
    /// Whether the held bytes are still in the scratch buffer.
    private var inScratch = false
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
                self.inScratch = true
            }
        } else {
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
        let error = errno
        if error == EAGAIN || error == EWOULDBLOCK || error == EINTR {
            self.release()
            return .wouldBlock
        }
        return .failed(error)
    }

    /// Writes up to `max` held bytes to `sink`; what it refuses stays, in memory of this direction's own.
    func send(to sink: CInt, max: Int, scratch: CopyScratch) -> FlowStep {
        let base = self.inScratch ? scratch.bytes.baseAddress! : self.own!.baseAddress!
        let result = write(sink, base + self.start, Swift.min(max, self.count))
        var step: FlowStep
        if result > 0 {
            self.start += result
            self.count -= result
            step = .moved(result)
        } else {
            let error = errno
            step = error == EAGAIN || error == EWOULDBLOCK || error == EINTR ? .wouldBlock : .failed(error)
        }
        if self.inScratch {
            // The scratch buffer is the next bridge's: keep what is left in memory of our own.
            if self.count > 0 {
                let own = self.ownMemory()
                own.baseAddress!.copyMemory(from: base + self.start, byteCount: self.count)
            }
            self.start = 0
            self.inScratch = false
        }
        if self.count == 0 {
            self.start = 0
            // A short read emptied the source: the flow reads no more this time, so let go now.
            if !self.lastReadFull { self.release() }
        }
        return step
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
        self.inScratch = false
        self.release()
    }
}

/// The real ``FlowIO`` of one direction on the copy path: read(2) and write(2) through a ``CopyBuffer``.
struct CopyDirectionIO: FlowIO {
    let source: CInt
    let buffer: CopyBuffer
    let sink: CInt
    let scratch: CopyScratch

    func fill(max count: Int) -> FlowStep {
        self.buffer.receive(from: self.source, max: count, scratch: self.scratch)
    }

    func drain(max count: Int) -> FlowStep {
        self.buffer.send(to: self.sink, max: count, scratch: self.scratch)
    }

    func shutdownSink() -> CInt? {
        shutdown(self.sink, CInt(SHUT_WR)) == 0 ? nil : errno
    }
}
