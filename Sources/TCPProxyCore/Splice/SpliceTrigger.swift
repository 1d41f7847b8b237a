/// Decides when a bridge on the NIO path carries bulk data and should move to the splice engine
/// (`--splice auto`), without I/O or a clock.
///
/// A read that fills at least half of the largest read NIO makes means more data was waiting in the
/// kernel; several in a row in one direction is a bulk transfer. Request/response traffic (HTTP, Redis)
/// makes small reads and never gets there. Nothing is timed: the data path only compares and counts.
struct SpliceTrigger: Equatable {
    /// Large reads in a row, in one direction, that make a bridge bulk (about 512 KiB at the default
    /// high-water mark).
    static let bulkReads = 8

    /// A read at least this large counts.
    private let largeRead: Int
    private var upstreamRun = 0
    private var downstreamRun = 0

    /// - Parameter highWaterMark: `--high-water-mark`, which bounds the reads (see `BridgeChannelOptions`).
    init(highWaterMark: Int) {
        let largestRead = max(1024, min(highWaterMark, 64 * 1024))
        self.largeRead = largestRead / 2
    }

    /// A read of `count` bytes in `direction`.
    /// - Returns: whether the bridge now counts as bulk.
    mutating func read(_ count: Int, _ direction: Direction) -> Bool {
        let large = count >= self.largeRead
        switch direction {
        case .upstream:
            self.upstreamRun = large ? self.upstreamRun + 1 : 0
            return self.upstreamRun >= Self.bulkReads
        case .downstream:
            self.downstreamRun = large ? self.downstreamRun + 1 : 0
            return self.downstreamRun >= Self.bulkReads
        }
    }
}
