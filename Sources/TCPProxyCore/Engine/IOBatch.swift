import CTCPProxyLinux

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The direct engine's batched reads and writes: for one epoll batch, the first read of every socket that
/// became readable goes to the kernel in one io_uring submission, and the writes of what they read in a
/// second, instead of a read(2) and a write(2) per socket (docs/BRIDGE.md, "Batched reads and writes").
///
/// It only moves bytes; what they mean is decided afterwards by the bridge's ``DirectFlow``, which replays
/// each slot's results (``CopyDirectionIO``) as if it had made the calls itself. A slot is an event's index
/// in the epoll batch: its slice of memory holds what was read until the flow takes it over.
final class IOBatch {
    /// Bytes one slot reads at most. A read that fills it is topped up with read(2) when the flow has more
    /// room, so bulk still moves in high-water-mark-sized reads.
    static let sliceSize = 16 * 1024

    /// A result not there (no operation queued for the slot, or already taken).
    private static let none = Int32.min
    private static let sendBit: UInt64 = 1 << 32

    private let ring: OpaquePointer
    let capacity: Int
    private let memory: UnsafeMutableRawBufferPointer
    private let completions: UnsafeMutableBufferPointer<CTCPProxyLinux_Completion>
    private var lengths: [Int]
    private var sinks: [CInt]
    private var received: [Int32]
    private var sent: [Int32]

    /// A batch of `capacity` slots, or `nil` where io_uring cannot serve it (then the engine makes plain
    /// calls): not Linux, or io_uring missing or disabled (`kernel.io_uring_disabled`, a container's
    /// seccomp filter). The ring belongs to the calling thread: only it may run the batch.
    init?(capacity: Int) {
        // Each slot queues at most one read and then one write, each run on its own.
        guard let ring = CTCPProxyLinux_ringCreate(UInt32(capacity)) else { return nil }
        self.ring = ring
        self.capacity = capacity
        // Pages are only touched by the slots a batch uses.
        self.memory = .allocate(byteCount: capacity * Self.sliceSize, alignment: 4096)
        self.completions = .allocate(capacity: capacity)
        self.lengths = Array(repeating: 0, count: capacity)
        self.sinks = Array(repeating: -1, count: capacity)
        self.received = Array(repeating: Self.none, count: capacity)
        self.sent = Array(repeating: Self.none, count: capacity)
    }

    deinit {
        CTCPProxyLinux_ringDestroy(self.ring)
        self.memory.deallocate()
        self.completions.deallocate()
    }

    /// The memory of `slot`.
    func slice(_ slot: Int) -> UnsafeMutableRawPointer {
        self.memory.baseAddress! + slot * Self.sliceSize
    }

    /// How many bytes `slot`'s read asked for.
    func length(_ slot: Int) -> Int { self.lengths[slot] }

    /// Queues a read of up to `room` bytes (at most a slice) from `source` into `slot`'s slice, whose
    /// bytes ``run()`` then writes to `sink`.
    func queueReceive(from source: CInt, to sink: CInt, slot: Int, room: Int) -> Bool {
        let length = min(room, Self.sliceSize)
        self.lengths[slot] = length
        self.sinks[slot] = sink
        self.received[slot] = Self.none
        self.sent[slot] = Self.none
        return CTCPProxyLinux_ringRecv(self.ring, source, self.slice(slot), UInt32(length), UInt64(slot)) == 0
    }

    /// Runs the queued reads, then the writes of what they read, in a second submission.
    /// - Returns: `false` if the ring failed (the batch must not be used again; slots without a result
    ///   take the plain path).
    func run() -> Bool {
        // Whatever ran is reaped even when the submission failed: a read that ran took bytes off its socket.
        let readsRan = self.submit()
        var writes = 0
        self.reap { slot, isWrite, result in
            // Every submitted operation has completed when the submission returns (it waits for all of them).
            guard !isWrite else { return }
            self.received[slot] = result
            guard result > 0 else { return }
            let sink = self.sinks[slot]
            let token = Self.sendBit | UInt64(slot)
            // After a failed submission nothing more is queued: those bytes are written with write(2).
            guard readsRan else { return }
            if CTCPProxyLinux_ringSend(self.ring, sink, self.slice(slot), UInt32(result), token) == 0 { writes += 1 }
        }
        guard readsRan else { return false }
        guard writes > 0 else { return true }
        let writesRan = self.submit()
        self.reap { slot, isWrite, result in
            if isWrite { self.sent[slot] = result } else { self.received[slot] = result }
        }
        return writesRan
    }

    /// What `slot`'s read returned (bytes, 0 for EOF, -errno), once; `nil` if it had none.
    func takeReceived(_ slot: Int) -> Int32? {
        let result = self.received[slot]
        self.received[slot] = Self.none
        return result == Self.none ? nil : result
    }

    /// What `slot`'s write returned (bytes, -errno), once; `nil` if it had none.
    func takeSent(_ slot: Int) -> Int32? {
        let result = self.sent[slot]
        self.sent[slot] = Self.none
        return result == Self.none ? nil : result
    }

    private func submit() -> Bool {
        CTCPProxyLinux_ringRun(self.ring) >= 0
    }

    /// Takes every completion off the ring: its slot, whether it was a write, and its result.
    private func reap(_ body: (Int, Bool, Int32) -> Void) {
        while true {
            let count = Int(CTCPProxyLinux_ringReap(self.ring, self.completions.baseAddress, CInt(self.capacity)))
            guard count > 0 else { return }
            for completion in self.completions[0..<count] {
                body(Int(completion.token & 0xFFFF_FFFF), completion.token & Self.sendBit != 0, completion.result)
            }
        }
    }
}

@available(*, unavailable)
extension IOBatch: Sendable {}

/// One slot of an ``IOBatch`` whose results a flow replays.
struct BatchSlot {
    let batch: IOBatch
    let slot: Int
}
