/// Decides when a bridge on the NIO path carries bulk data and should move to the splice engine
/// (`--splice auto`), without I/O or a clock.
///
/// Bulk is a run of sizeable reads in one direction: each at least an eighth of the largest read NIO
/// makes (8 KiB at the default high-water mark), together at least eight largest reads (512 KiB). A
/// read smaller than that ends the run. Request/response traffic (HTTP, Redis) makes small reads between
/// its messages and never gets there; a sender that keeps the socket full does within a few wakeups.
/// Nothing is timed: the data path only compares and adds.
struct SpliceTrigger: Equatable {
    /// The run, in largest reads, that makes a bridge bulk.
    static let bulkReads = 8

    /// A read at least this large continues a run.
    private let sizeableRead: Int
    /// A run of at least this many bytes is bulk.
    private let bulkBytes: Int
    private var upstreamRun = 0
    private var downstreamRun = 0

    /// - Parameter highWaterMark: `--high-water-mark`, which bounds the reads (see `BridgeChannelOptions`).
    init(highWaterMark: Int) {
        let largestRead = max(1024, min(highWaterMark, 64 * 1024))
        self.sizeableRead = largestRead / 8
        self.bulkBytes = largestRead * Self.bulkReads
    }

    /// Whether a direction's current run is bulk.
    var isBulk: Bool { self.upstreamRun >= self.bulkBytes || self.downstreamRun >= self.bulkBytes }

    /// A read of `count` bytes in `direction`.
    /// - Returns: whether the bridge now counts as bulk.
    mutating func read(_ count: Int, _ direction: Direction) -> Bool {
        switch direction {
        case .upstream:
            self.upstreamRun = count >= self.sizeableRead ? self.upstreamRun + count : 0
            return self.upstreamRun >= self.bulkBytes
        case .downstream:
            self.downstreamRun = count >= self.sizeableRead ? self.downstreamRun + count : 0
            return self.downstreamRun >= self.bulkBytes
        }
    }
}
