import NIOCore

/// When accepting fails for want of descriptors or memory, one warning per episode rather than one per
/// retry (SPEC: "one warning per episode"), and one line when it is over.
///
/// Accepts can succeed now and then inside an episode (a bridge that fails its connect frees its
/// descriptor for the next client, which fails the same way), so an episode ends only at an accept that
/// succeeds a quiet second after the last failure.
struct AcceptExhaustion {
    /// How long accepting must go without a failure before a success ends the episode.
    static let quiet = TimeAmount.seconds(1)

    private var lastFailure: NIODeadline?
    /// Failed accepts in the current episode.
    private(set) var failures = 0

    /// Whether an episode is under way.
    var isOngoing: Bool { self.lastFailure != nil }

    /// An accept failed: whether this begins an episode (the moment to warn).
    mutating func failed(at now: NIODeadline) -> Bool {
        let begins = self.lastFailure == nil
        self.lastFailure = now
        self.failures += 1
        return begins
    }

    /// An accept succeeded: the failures of the episode this ends, or `nil` when none ends.
    mutating func succeeded(at now: NIODeadline) -> Int? {
        guard let lastFailure = self.lastFailure, now - lastFailure >= Self.quiet else { return nil }
        defer {
            self.lastFailure = nil
            self.failures = 0
        }
        return self.failures
    }
}
