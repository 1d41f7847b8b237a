import NIOCore

/// Chunks held back by `--latency MS[:JITTER_MS]`, or by a rate they are ahead of, in order, each with the
/// time it may be written.
///
/// Jitter never reorders: a chunk is never due before the one ahead of it. The bytes held count towards
/// the direction's high-water mark, so a delayed direction keeps back-pressure.
struct DelayLine {
    /// The fixed delay.
    let delay: TimeAmount
    /// The most extra delay, drawn uniformly from 0 up to it for each chunk.
    let jitter: TimeAmount
    private var chunks = CircularBuffer<(due: NIODeadline, buffer: ByteBuffer)>(initialCapacity: 4)
    private var lastDue: NIODeadline?

    /// Bytes held now.
    private(set) var heldBytes = 0

    init(delay: TimeAmount, jitter: TimeAmount) {
        self.delay = delay
        self.jitter = jitter
    }

    var isEmpty: Bool { self.chunks.isEmpty }

    /// When the first chunk is due, if any.
    var nextDue: NIODeadline? { self.chunks.first?.due }

    /// Holds `buffer` until its delay (and `hold` more, the rate's pacing) has passed.
    mutating func append<Generator: RandomNumberGenerator>(
        _ buffer: ByteBuffer,
        now: NIODeadline,
        hold: TimeAmount = .zero,
        using generator: inout Generator
    ) {
        var extra = hold
        if self.jitter.nanoseconds > 0 {
            extra = extra + .nanoseconds(Int64.random(in: 0...self.jitter.nanoseconds, using: &generator))
        }
        var due = now + self.delay + extra
        if let lastDue, due < lastDue { due = lastDue }
        self.lastDue = due
        self.heldBytes += buffer.readableBytes
        self.chunks.append((due, buffer))
    }

    /// Takes the next chunk whose time has come.
    mutating func popDue(now: NIODeadline) -> ByteBuffer? {
        guard let first = self.chunks.first, first.due <= now else { return nil }
        self.chunks.removeFirst()
        self.heldBytes -= first.buffer.readableBytes
        return first.buffer
    }

    /// Drops everything (the bridge is closing).
    mutating func removeAll() {
        self.chunks.removeAll()
        self.heldBytes = 0
    }
}
