import NIOCore

/// The bounded queue between the threads that synthesize packets and the one that writes them.
///
/// Pure bookkeeping, kept behind the writer's lock. Bytes count against the bound from the moment a
/// producer reserves room until the writer has written them, so the bound covers every record buffer that
/// exists: reserved, queued or being written.
struct CaptureQueue: Sendable {
    /// Records synthesized together into one buffer, written together.
    struct Entry: Sendable {
        /// Whole pcap records.
        var buffer: ByteBuffer
        /// How many records the buffer holds.
        var records: Int
        /// The bytes reserved for them with ``CaptureQueue/reserve(bytes:records:)``: the buffer's size.
        var bytes: Int
    }

    /// What the writer thread does next.
    enum WriterStep: Sendable {
        /// Write these entries, then report them with ``CaptureQueue/finishedWriting(bytes:records:succeeded:)``.
        case write([Entry])
        /// Nothing to do: sleep until woken.
        case wait
        /// Closed and everything written: close the file and exit.
        case exit
    }

    /// The most bytes reserved, queued or being written at once.
    let maximumBytes: Int
    /// Bytes reserved, queued or being written now.
    private(set) var queuedBytes = 0
    /// Records dropped because the queue was full, or because the file could not be written.
    private(set) var droppedRecords = 0
    /// Records written to the file.
    private(set) var writtenRecords = 0
    /// Whether ``close()`` was called: no record is accepted after it.
    private(set) var isClosed = false
    /// The write error that stopped capturing, if any.
    var failure: CaptureError?
    /// Entries waiting for the writer, oldest first.
    private var entries: [Entry] = []
    /// Whether the writer went to sleep and needs a wake-up.
    private var writerIsWaiting = false

    /// - Parameter maximumBytes: The bound on ``queuedBytes``.
    init(maximumBytes: Int) {
        self.maximumBytes = maximumBytes
    }

    /// Reserves room for records a producer is about to synthesize.
    /// - Parameters:
    ///   - bytes: Their size.
    ///   - records: How many records; counted as dropped if they do not fit, or if writing failed.
    /// - Returns: Whether they fit; if not, the producer skips synthesizing them.
    mutating func reserve(bytes: Int, records: Int) -> Bool {
        guard !self.isClosed else { return false }
        guard self.failure == nil, bytes <= self.maximumBytes - self.queuedBytes else {
            self.droppedRecords += records
            return false
        }
        self.queuedBytes += bytes
        return true
    }

    /// Queues records whose room was reserved with ``reserve(bytes:records:)``.
    /// - Parameter entry: The synthesized records.
    /// - Returns: Whether the writer is asleep and must be woken.
    mutating func enqueue(_ entry: Entry) -> Bool {
        guard !self.isClosed else {
            // Closed while the producer was synthesizing: too late to be written.
            self.queuedBytes -= entry.bytes
            self.droppedRecords += entry.records
            return false
        }
        self.entries.append(entry)
        return self.wakeWriter()
    }

    /// The writer asks what to do next.
    /// - Returns: Everything queued, or ``WriterStep/wait`` (marking the writer asleep), or ``WriterStep/exit``.
    mutating func nextWriterStep() -> WriterStep {
        if !self.entries.isEmpty {
            defer { self.entries = [] }
            return .write(self.entries)
        }
        if self.isClosed { return .exit }
        self.writerIsWaiting = true
        return .wait
    }

    /// The writer finished with entries from ``WriterStep/write(_:)``.
    /// - Parameters:
    ///   - bytes: Their total size, released from the bound.
    ///   - records: How many records they held.
    ///   - succeeded: Whether they reached the file; if not, they count as dropped.
    mutating func finishedWriting(bytes: Int, records: Int, succeeded: Bool) {
        self.queuedBytes -= bytes
        if succeeded {
            self.writtenRecords += records
        } else {
            self.droppedRecords += records
        }
    }

    /// Accepts no more records; what is queued is still written.
    /// - Returns: Whether the writer is asleep and must be woken.
    mutating func close() -> Bool {
        self.isClosed = true
        return self.wakeWriter()
    }

    /// Clears the sleeping mark.
    /// - Returns: Whether the writer was asleep, so exactly one wake-up is sent per sleep.
    private mutating func wakeWriter() -> Bool {
        guard self.writerIsWaiting else { return false }
        self.writerIsWaiting = false
        return true
    }
}
