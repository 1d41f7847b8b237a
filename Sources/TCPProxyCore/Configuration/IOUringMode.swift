/// Whether the direct engine batches a bridge's reads and writes through io_uring (`--io-uring`,
/// docs/BRIDGE.md "Batched reads and writes").
public enum IOUringMode: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// Batch where the kernel allows io_uring (Linux 5.5 or later, not disabled by
    /// `kernel.io_uring_disabled` or a seccomp filter); plain read(2)/write(2) elsewhere.
    case auto
    /// Always plain read(2)/write(2), one call each.
    case off

    public var description: String { self.rawValue }
}
