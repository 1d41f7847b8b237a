import NIOCore

/// What the chunk-level options do to one bridge's data, per direction: rate limits (`--upstream-rate`,
/// `--downstream-rate`), `--latency` and `--corrupt`. A bridge has one only when such an option is set,
/// so the plain data path stays a plain hand-over.
struct BridgeShaping {
    private var buckets: [TokenBucket?]
    private var delayLines: [DelayLine?]
    private let flippers: [BitFlipper?]
    /// A write shutdown waits for the delayed chunks of its direction.
    private var shutdownAfterDelay = [false, false]
    var random: RandomSource

    /// - Parameters:
    ///   - configuration: the options.
    ///   - now: when the bridge started.
    ///   - random: the random source for jitter and bit flips.
    init(configuration: BridgeConfiguration, now: NIODeadline, random: RandomSource = RandomSource()) {
        self.random = random
        self.buckets = Direction.allCases.map { direction in
            configuration.rate(direction).map { TokenBucket(rate: $0, now: now) }
        }
        self.delayLines = Direction.allCases.map { direction in
            if let latency = configuration.latency, configuration.faultDirections.contains(direction) {
                return DelayLine(delay: latency, jitter: configuration.latencyJitter)
            }
            // A rate holds back what a read brought too far ahead of it (``TokenBucket/holdTime()``).
            return configuration.rate(direction) == nil ? nil : DelayLine(delay: .zero, jitter: .zero)
        }
        self.flippers = Direction.allCases.map { direction in
            guard configuration.corruptProbability > 0, configuration.faultDirections.contains(direction) else {
                return nil
            }
            return BitFlipper(probability: configuration.corruptProbability)
        }
    }

    // MARK: Rate limits

    /// The largest read worth making in `direction`, when a rate limit caps it.
    static func readLimit(_ configuration: BridgeConfiguration, _ direction: Direction) -> Int? {
        configuration.rate(direction).map(TokenBucket.readLimit(forRate:))
    }

    /// Counts a read of `bytes` against `direction`'s rate.
    mutating func consume(_ bytes: Int, _ direction: Direction, now: NIODeadline) {
        self.buckets[direction.index]?.consume(bytes, now: now)
    }

    /// How long `direction`'s source must wait before the next read, `nil` if it may read now.
    mutating func rateWait(_ direction: Direction, now: NIODeadline) -> TimeAmount? {
        self.buckets[direction.index]?.waitTime(now: now)
    }

    // MARK: Faults

    /// Flips a bit of `buffer` if `--corrupt` says so for this direction.
    mutating func corrupt(_ buffer: inout ByteBuffer, _ direction: Direction) {
        guard let flipper = self.flippers[direction.index] else { return }
        flipper.maybeFlip(&buffer, using: &self.random)
    }

    /// How long a chunk just read in `direction` must wait before it is written: `nil` to write it now; the
    /// latency (and the rate's hold, if any) when `--latency` applies; the rate's hold when the read ran
    /// more than a burst ahead of the rate; and at once-but-in-order (zero) behind chunks still held.
    func hold(_ direction: Direction) -> TimeAmount? {
        guard let line = self.delayLines[direction.index] else { return nil }
        let rateHold = self.buckets[direction.index]?.holdTime()
        if line.delay > .zero || line.jitter > .zero || !line.isEmpty { return rateHold ?? .zero }
        return rateHold
    }

    /// Whether `--latency` holds back any chunk, in either direction.
    var hasDelayedBytes: Bool {
        self.delayLines.contains { ($0?.heldBytes ?? 0) > 0 }
    }

    /// Bytes held back in `direction` by `--latency`.
    func delayedBytes(_ direction: Direction) -> Int {
        self.delayLines[direction.index]?.heldBytes ?? 0
    }

    /// Holds `buffer` back in `direction`, for its latency and `hold` more.
    mutating func delay(_ buffer: ByteBuffer, _ direction: Direction, now: NIODeadline, hold: TimeAmount = .zero) {
        self.delayLines[direction.index]?.append(buffer, now: now, hold: hold, using: &self.random)
    }

    /// When the next delayed chunk of `direction` is due.
    func nextDue(_ direction: Direction) -> NIODeadline? {
        self.delayLines[direction.index]?.nextDue
    }

    /// The next chunk of `direction` whose delay has passed.
    mutating func popDue(_ direction: Direction, now: NIODeadline) -> ByteBuffer? {
        self.delayLines[direction.index]?.popDue(now: now)
    }

    /// Asks for the write shutdown of `direction` to wait until its delayed chunks are out.
    /// - Returns: `true` if it must wait, `false` if it may happen now.
    mutating func deferShutdown(_ direction: Direction) -> Bool {
        guard let line = self.delayLines[direction.index], !line.isEmpty else { return false }
        self.shutdownAfterDelay[direction.index] = true
        return true
    }

    /// Whether `direction`'s write shutdown was waiting and its delayed chunks are now out.
    mutating func takeDeferredShutdown(_ direction: Direction) -> Bool {
        guard self.shutdownAfterDelay[direction.index], self.delayLines[direction.index]?.isEmpty ?? true else {
            return false
        }
        self.shutdownAfterDelay[direction.index] = false
        return true
    }

    /// Drops held chunks (the bridge is closing).
    mutating func removeAll() {
        for index in self.delayLines.indices { self.delayLines[index]?.removeAll() }
    }
}

extension Direction: CaseIterable {
    public static var allCases: [Direction] { [.upstream, .downstream] }

    /// 0 for upstream, 1 for downstream: an index into per-direction arrays.
    var index: Int { self == .upstream ? 0 : 1 }
}

extension BridgeStateMachine.Side {
    /// The direction of data read from this side: the client's bytes go upstream.
    var readDirection: Direction { self == .client ? .upstream : .downstream }
}
