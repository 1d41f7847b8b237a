import NIOCore

/// Capped exponential backoff with jitter for the mux's tunnel reconnects, without a clock or I/O.
///
/// The first retry waits `initial`, each later one twice the last, up to `maximum`; every delay is then
/// spread by up to ±`jitter` of itself (drawn from the caller's random number) so many muxes that lost
/// the same demux do not all come back at once. A tunnel that came up resets it.
struct MuxBackoff: Hashable, Sendable {
    let initial: TimeAmount
    let maximum: TimeAmount
    let jitter: Double
    private var next: TimeAmount

    init(initial: TimeAmount = .milliseconds(100), maximum: TimeAmount = .seconds(5), jitter: Double = 0.2) {
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.next = initial
    }

    /// The delay before the next attempt, and the one after it doubled (up to the cap).
    /// - Parameter random: a number in `0..<1`; 0.5 means no jitter.
    mutating func nextDelay(random: Double) -> TimeAmount {
        let base = self.next
        self.next = .nanoseconds(min(self.maximum.nanoseconds, base.nanoseconds * 2))
        let factor = 1 + self.jitter * (2 * random - 1)
        return .nanoseconds(Int64(Double(base.nanoseconds) * factor))
    }

    /// A tunnel came up: the next failure starts from `initial` again.
    mutating func reset() {
        self.next = self.initial
    }
}
