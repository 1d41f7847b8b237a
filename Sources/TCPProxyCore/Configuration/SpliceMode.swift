/// When a bridge leaves NIO for the splice engine, which moves its bytes socket → pipe → socket inside
/// the kernel (`--splice`, docs/BRIDGE.md "The splice path"). Only bridges on the plain path qualify:
/// no rate limit, `--log-data`, `--capture`, `--latency` or `--corrupt`.
public enum SpliceMode: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// Splice a bridge once it carries bulk data (several full reads in a row in one direction);
    /// request/response traffic stays on NIO.
    case auto
    /// Splice every qualifying bridge as soon as both sides are connected.
    case always
    /// Never splice.
    case never

    public var description: String { self.rawValue }
}
