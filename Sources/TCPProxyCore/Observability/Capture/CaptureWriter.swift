import Atomics
import Dispatch
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The `--capture` file: every bridge's payload as synthesized TCP/IP packets in one pcap file that
/// `tcpdump -r` and Wireshark read.
///
/// One per process, shared by bridges on every event loop. Bridges synthesize packets on their own threads
/// (see ``CaptureConversation``); one background thread writes them. Between the two is a queue bounded by
/// `maximumQueuedBytes`: when the disk cannot keep up, new records are dropped and counted
/// (``droppedRecords``), so capture never blocks an event loop and never grows memory without bound.
///
/// Call ``close()`` when done: the writer thread holds on to the writer until then.
public final class CaptureWriter: Sendable {
    /// The capture file.
    public let path: String
    /// The open file; owned, and closed, by the writer thread.
    private let fileDescriptor: CInt
    /// The bounded queue and the counters.
    private let queue: NIOLockedValueBox<CaptureQueue>
    /// Conversations started, for initial sequence numbers.
    private let conversationCount = ManagedAtomic<UInt32>(1)
    /// Wakes the sleeping writer thread: signalled once for each time it went to sleep.
    private let wakeUp = DispatchSemaphore(value: 0)
    /// Signalled when the writer thread has closed the file; each waiter passes the signal on.
    private let writerExited = DispatchSemaphore(value: 0)
    /// A close gave up waiting for the writer: later ones do not wait again.
    private let gaveUp = ManagedAtomic(false)
    /// The writer thread.
    private let writerThread: NIOThreadPool
    /// For record buffers.
    private let allocator = ByteBufferAllocator()

    /// Records smaller than this are gathered into one write of at most this size, to save system calls.
    private static let stagingCapacity = 64 * 1024

    /// Opens (truncates) the file, writes the pcap file header and starts the writer thread.
    /// - Parameters:
    ///   - path: The capture file.
    ///   - maximumQueuedBytes: The most bytes of records waiting to be written; more are dropped.
    /// - Throws: ``CaptureError`` when the file cannot be opened or its header written.
    public init(path: String, maximumQueuedBytes: Int = 8 * 1024 * 1024) throws {
        let fileDescriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fileDescriptor >= 0 else {
            throw CaptureError(path: path, reason: errorText(errno))
        }
        var header = ByteBuffer()
        header.writePCAPGlobalHeader()
        if let code = writeAll(header, to: fileDescriptor) {
            closeDescriptor(fileDescriptor)
            throw CaptureError(path: path, reason: errorText(code))
        }
        self.path = path
        self.fileDescriptor = fileDescriptor
        self.queue = NIOLockedValueBox(CaptureQueue(maximumBytes: maximumQueuedBytes))
        self.writerThread = NIOThreadPool(numberOfThreads: 1)
        self.writerThread.start()
        // The work item runs until close(): a thread of its own, which may block on the disk.
        self.writerThread.submit { _ in self.runWriter() }
    }

    /// Records dropped because the queue was full (or, after a write error, because the file is broken).
    public var droppedRecords: Int { self.queue.withLockedValue { $0.droppedRecords } }

    /// Records written so far.
    public var writtenRecords: Int { self.queue.withLockedValue { $0.writtenRecords } }

    /// The write error that stopped capturing, if any; every later record is dropped.
    public var failure: CaptureError? { self.queue.withLockedValue { $0.failure } }

    /// Bytes of records reserved, queued or being written; never above `maximumQueuedBytes`.
    var queuedBytes: Int { self.queue.withLockedValue { $0.queuedBytes } }

    /// Starts a conversation for one bridge and records its three-way handshake.
    ///
    /// If one address is IPv4 and the other IPv6, both appear as IPv6 (`::ffff:a.b.c.d`).
    /// - Parameters:
    ///   - client: The client's address (the source of upstream packets).
    ///   - server: The server's address (the source of downstream packets).
    /// - Returns: The conversation, for the bridge's event loop only.
    func conversation(client: SocketAddress, server: SocketAddress) -> CaptureConversation {
        let number = self.conversationCount.loadThenWrappingIncrement(ordering: .relaxed)
        // Spread the counter over the sequence space (Fibonacci hashing), so conversations don't share
        // sequence numbers; the server's side starts half the space away from the client's.
        let clientInitialSequence = number &* 0x9E37_79B9
        let state = TCPConversationState(
            client: CaptureEndpoint(client),
            server: CaptureEndpoint(server),
            clientInitialSequence: clientInitialSequence,
            serverInitialSequence: clientInitialSequence &+ 0x8000_0000
        )
        return CaptureConversation(writer: self, state: state)
    }

    /// Queues records synthesized on the calling thread, or drops them if they do not fit.
    /// - Parameters:
    ///   - bytes: The exact size `synthesize` writes.
    ///   - records: How many records it writes.
    ///   - synthesize: Writes the records; not called when they are dropped.
    func submit(bytes: Int, records: Int, _ synthesize: (inout ByteBuffer) -> Void) {
        guard self.queue.withLockedValue({ $0.reserve(bytes: bytes, records: records) }) else { return }
        // Synthesized outside the lock, so bridges on other event loops don't wait on each other's copies.
        var buffer = self.allocator.buffer(capacity: bytes)
        synthesize(&buffer)
        assert(buffer.readableBytes == bytes, "synthesized \(buffer.readableBytes) bytes, reserved \(bytes)")
        let entry = CaptureQueue.Entry(buffer: buffer, records: records, bytes: bytes)
        if self.queue.withLockedValue({ $0.enqueue(entry) }) {
            self.wakeUp.signal()
        }
    }

    /// How long ``close(timeout:)`` waits for the queue to be written by default.
    public static let closeTimeout = DispatchTimeInterval.seconds(10)

    /// Writes everything still queued, closes the file and stops the writer thread. Idempotent; every
    /// caller returns once the file is closed, or once `timeout` has passed. Records submitted afterwards
    /// are ignored.
    ///
    /// Blocks until the queue (at most `maximumQueuedBytes`) is on disk, so call it off the event loops,
    /// after the bridges have ended. A file that takes nothing (a pipe whose reader stopped reading) keeps
    /// the writer thread in `write(2)`: then it gives up after `timeout`, so that the process can exit.
    /// - Returns: whether everything queued was written and the file closed.
    @discardableResult
    public func close(timeout: DispatchTimeInterval = CaptureWriter.closeTimeout) -> Bool {
        let (isFirst, mustWake) = self.queue.withLockedValue { queue in (!queue.isClosed, queue.close()) }
        if mustWake {
            self.wakeUp.signal()
        }
        guard !self.gaveUp.load(ordering: .relaxed) else { return false }
        guard self.writerExited.wait(timeout: .now() + timeout) == .success else {
            self.gaveUp.store(true, ordering: .relaxed)
            return false
        }
        if isFirst {
            // The work item has returned, so the pool's thread exits at once.
            try? self.writerThread.syncShutdownGracefully()
        }
        // Pass the signal on to the next caller of close(), now or later.
        self.writerExited.signal()
        return true
    }

    /// The writer thread: writes what is queued, sleeps while there is nothing, and exits once closed and
    /// empty. A named function, so stack dumps read well.
    private func runWriter() {
        // A capture file may be a pipe (`--capture /dev/stdout | tcpdump -r -`): if its reader goes away,
        // write(2) must fail with EPIPE, not raise SIGPIPE and end the proxy. SIGPIPE goes to the thread
        // that wrote, so blocking it here, on our own thread, is enough.
        var signals = sigset_t()
        sigemptyset(&signals)
        sigaddset(&signals, SIGPIPE)
        pthread_sigmask(SIG_BLOCK, &signals, nil)

        var staging = self.allocator.buffer(capacity: Self.stagingCapacity)
        var failure: CaptureError?
        writing: while true {
            switch self.queue.withLockedValue({ $0.nextWriterStep() }) {
            case .wait:
                self.wakeUp.wait()
            case .exit:
                break writing
            case .write(let entries):
                var bytes = 0
                var records = 0
                for entry in entries {
                    bytes += entry.bytes
                    records += entry.records
                }
                if failure == nil {
                    failure = self.write(entries, staging: &staging)
                }
                let succeeded = failure == nil
                self.queue.withLockedValue { queue in
                    queue.finishedWriting(bytes: bytes, records: records, succeeded: succeeded)
                    if queue.failure == nil { queue.failure = failure }
                }
            }
        }
        closeDescriptor(self.fileDescriptor)
        self.writerExited.signal()
    }

    /// Writes entries to the file, gathering small ones into `staging` first.
    /// - Returns: The error, if a write failed.
    private func write(_ entries: [CaptureQueue.Entry], staging: inout ByteBuffer) -> CaptureError? {
        for entry in entries {
            if staging.readableBytes + entry.buffer.readableBytes > Self.stagingCapacity, staging.readableBytes > 0 {
                if let error = self.flush(&staging) { return error }
            }
            if entry.buffer.readableBytes >= Self.stagingCapacity {
                if let code = writeAll(entry.buffer, to: self.fileDescriptor) {
                    return CaptureError(path: self.path, reason: errorText(code))
                }
            } else {
                staging.writeImmutableBuffer(entry.buffer)
            }
        }
        return self.flush(&staging)
    }

    /// Writes and empties `staging`.
    /// - Returns: The error, if the write failed.
    private func flush(_ staging: inout ByteBuffer) -> CaptureError? {
        defer { staging.clear() }
        guard staging.readableBytes > 0 else { return nil }
        guard let code = writeAll(staging, to: self.fileDescriptor) else { return nil }
        return CaptureError(path: self.path, reason: errorText(code))
    }
}

/// Writes all of `buffer` with `write(2)`, retrying after signals and short writes.
/// - Returns: `errno` if a write failed.
private func writeAll(_ buffer: ByteBuffer, to fileDescriptor: CInt) -> CInt? {
    buffer.withUnsafeReadableBytes { bytes in
        var offset = 0
        while offset < bytes.count {
            let written = write(fileDescriptor, bytes.baseAddress! + offset, bytes.count - offset)
            if written < 0 {
                if errno == EINTR { continue }
                return errno
            }
            offset += written
        }
        return nil
    }
}

/// `permission denied`: the `strerror` text of an `errno` value, lowercased.
private func errorText(_ code: CInt) -> String {
    String(cString: strerror(code)).lowercased()
}
