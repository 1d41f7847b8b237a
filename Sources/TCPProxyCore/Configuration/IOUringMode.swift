/// Whether the direct engine batches a bridge's reads and writes through io_uring (`--io-uring`,
/// docs/BRIDGE.md "Batched reads and writes").
public enum IOUringMode: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// Batch where the kernel allows io_uring (Linux 5.5 or later, not disabled by
    /// `kernel.io_uring_disabled` or a seccomp filter) and a poll finds several readable sockets; plain
    /// read(2)/write(2) otherwise.
    case auto
    /// As `auto`, but a single readable socket is batched too: every first read of the copy path goes through
    /// the batch (for tests and measurements; alone, a socket costs a little more this way).
    case always
    /// Always plain read(2)/write(2), one call each.
    case off

    public var description: String { self.rawValue }
}
