import NIOCore

/// A token bucket for one direction's byte rate (`--upstream-rate`, `--downstream-rate`), without a clock
/// of its own.
///
/// Tokens are bytes. They refill continuously at `rate` up to `burst`; a read takes as many as it
/// brought, possibly more than there were (the balance goes negative), and reading waits until the
/// balance is positive again. The proxy throttles by pausing reads, never by holding data, so memory
/// stays bounded by the high-water mark. A small burst (1/16 s of the rate) and reads no larger than it
/// (at most 64 KiB, see ``readLimit(forRate:)``) keep the flow smooth: no burst-then-sleep of a whole second.
struct TokenBucket {
    /// Bytes per second.
    let rate: Int
    /// Most tokens the bucket holds, and the largest read that makes sense under this rate.
    let burst: Int
    private var tokens: Double
    private var last: NIODeadline

    /// - Parameters:
    ///   - rate: bytes per second, more than 0.
    ///   - now: the current time.
    init(rate: Int, now: NIODeadline) {
        self.rate = rate
        self.burst = TokenBucket.burst(forRate: rate)
        self.tokens = Double(self.burst)
        self.last = now
    }

    /// The burst for a rate: 1/16 of a second's worth, at least 64 bytes (so a rate below 16 KiB/s still
    /// moves in small steps several times a second, not a kilobyte and then a pause of seconds).
    static func burst(forRate rate: Int) -> Int {
        max(Self.smallestRead, rate / 16)
    }

    /// The smallest read a rate limit makes.
    static let smallestRead = 64

    /// The largest read worth making under a rate: one burst, at most 64 KiB.
    static func readLimit(forRate rate: Int) -> Int {
        min(64 * 1024, Self.burst(forRate: rate))
    }

    /// A read of `bytes` happened.
    mutating func consume(_ bytes: Int, now: NIODeadline) {
        self.refill(now: now)
        self.tokens -= Double(bytes)
    }

    /// `nil` when reading may go ahead now; otherwise how long until the balance is positive again.
    mutating func waitTime(now: NIODeadline) -> TimeAmount? {
        self.refill(now: now)
        guard self.tokens <= 0 else { return nil }
        let seconds = (-self.tokens + 1) / Double(self.rate)
        return .nanoseconds(max(1_000_000, Int64(seconds * 1e9)))
    }

    /// After a read: how long its bytes must be held before they are written so that the rate holds, `nil`
    /// when they are no more than one burst ahead of it. Reading pauses until the balance is positive, so
    /// this only happens when reads come faster than the pause can stop them (NIO drains a socket at once
    /// when its peer's FIN arrives).
    func holdTime() -> TimeAmount? {
        let ahead = -self.tokens - Double(self.burst)
        guard ahead > 0 else { return nil }
        return .nanoseconds(Int64(ahead / Double(self.rate) * 1e9))
    }

    private mutating func refill(now: NIODeadline) {
        guard now > self.last else { return }
        let elapsed = Double((now - self.last).nanoseconds) / 1e9
        self.tokens = min(Double(self.burst), self.tokens + elapsed * Double(self.rate))
        self.last = now
    }
}
