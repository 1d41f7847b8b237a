import Dispatch
import Foundation
import NIOCore
import Testing

@testable import TCPProxyCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

@Suite("Capture: bounded queue")
struct CaptureQueueTests {
    private func entry(_ bytes: Int, records: Int = 1) -> CaptureQueue.Entry {
        CaptureQueue.Entry(buffer: ByteBuffer(repeating: 0, count: bytes), records: records, bytes: bytes)
    }

    @Test("records that do not fit are dropped and counted; written bytes free room")
    func bound() {
        var queue = CaptureQueue(maximumBytes: 100)
        var fits = queue.reserve(bytes: 60, records: 1)
        #expect(fits)
        fits = queue.reserve(bytes: 41, records: 2)
        #expect(!fits)
        #expect(queue.droppedRecords == 2)
        fits = queue.reserve(bytes: 40, records: 1)
        #expect(fits)
        #expect(queue.queuedBytes == 100)
        let mustWake = queue.enqueue(self.entry(60))
        #expect(!mustWake)  // the writer is not asleep
        guard case .write(let entries) = queue.nextWriterStep() else {
            Issue.record("expected entries to write")
            return
        }
        #expect(entries.count == 1)
        #expect(queue.queuedBytes == 100)  // still counted while being written
        queue.finishedWriting(bytes: 60, records: 1, succeeded: true)
        #expect(queue.queuedBytes == 40 && queue.writtenRecords == 1)
        fits = queue.reserve(bytes: 101, records: 1)
        #expect(!fits)  // never fits
        #expect(queue.droppedRecords == 3)
    }

    @Test("the writer is woken exactly once per sleep, and exits only when closed and empty")
    func writerSteps() {
        var queue = CaptureQueue(maximumBytes: 1000)
        guard case .wait = queue.nextWriterStep() else {
            Issue.record("expected the writer to wait")
            return
        }
        var fits = queue.reserve(bytes: 10, records: 1)
        #expect(fits)
        var mustWake = queue.enqueue(self.entry(10))
        #expect(mustWake)  // asleep: wake it
        fits = queue.reserve(bytes: 10, records: 1)
        #expect(fits)
        mustWake = queue.enqueue(self.entry(10))
        #expect(!mustWake)  // already woken
        mustWake = queue.close()
        #expect(!mustWake)
        guard case .write(let entries) = queue.nextWriterStep() else {
            Issue.record("closing still writes what is queued")
            return
        }
        #expect(entries.count == 2)
        queue.finishedWriting(bytes: 20, records: 2, succeeded: true)
        guard case .exit = queue.nextWriterStep() else {
            Issue.record("expected the writer to exit")
            return
        }
        fits = queue.reserve(bytes: 10, records: 1)
        #expect(!fits)
        #expect(queue.droppedRecords == 0)  // records after close are ignored, not dropped
    }

    @Test("records reserved before close and queued after it are dropped, and their room freed")
    func enqueueAfterClose() {
        var queue = CaptureQueue(maximumBytes: 1000)
        let fits = queue.reserve(bytes: 10, records: 3)
        #expect(fits)
        _ = queue.close()
        let mustWake = queue.enqueue(self.entry(10, records: 3))
        #expect(!mustWake)
        #expect(queue.queuedBytes == 0 && queue.droppedRecords == 3)
    }

    @Test("a failed write counts its records, and every later one, as dropped")
    func failure() {
        var queue = CaptureQueue(maximumBytes: 1000)
        var fits = queue.reserve(bytes: 10, records: 2)
        #expect(fits)
        queue.finishedWriting(bytes: 10, records: 2, succeeded: false)
        queue.failure = CaptureError(path: "/x", reason: "no space left on device")
        fits = queue.reserve(bytes: 10, records: 1)
        #expect(!fits)
        #expect(queue.droppedRecords == 3 && queue.writtenRecords == 0)
    }

    @Test(
        "a writer whose file cannot keep up drops records without blocking, within its bound",
        .timeLimit(.minutes(1))
    )
    func slowFileDropsWithinTheBound() throws {
        // A FIFO that nobody reads: once its pipe buffer (64 KiB) is full, the writer thread blocks in
        // write(2), as on a disk that cannot keep up.
        let path = temporaryCapturePath("fifo")
        #expect(mkfifo(path, 0o600) == 0)
        defer { unlink(path) }
        let reader = open(path, O_RDONLY | O_NONBLOCK)
        try #require(reader >= 0)
        defer { close(reader) }

        let bound = 16 * 1024
        let writer = try CaptureWriter(path: path, maximumQueuedBytes: bound)
        let conversation = writer.conversation(
            client: try SocketAddress(ipAddress: "127.0.0.1", port: 50000),
            server: try SocketAddress(ipAddress: "127.0.0.1", port: 8080)
        )
        let chunk = ByteBuffer(repeating: UInt8(ascii: "x"), count: 1000)
        let burst = 5000  // about 5 MB, far beyond the pipe buffer and the bound
        var largestQueue = 0
        for index in 0..<burst {
            conversation.record(chunk, direction: index % 2 == 0 ? .upstream : .downstream)
            largestQueue = max(largestQueue, writer.queuedBytes)
        }
        #expect(largestQueue <= bound)
        #expect(writer.queuedBytes <= bound)
        #expect(writer.droppedRecords > 0)
        #expect(writer.droppedRecords > burst / 2)  // the pipe buffer and the queue hold the rest

        // Drain the FIFO so close() can write what is queued, then check what came out is a clean file.
        let flags = fcntl(reader, F_GETFL)
        _ = fcntl(reader, F_SETFL, flags & ~O_NONBLOCK)
        let drained = LockedBytes()
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = buffer.withUnsafeMutableBytes { read(reader, $0.baseAddress, $0.count) }
                if count > 0 {
                    drained.append(buffer[0..<count])
                } else if count == 0 || errno != EINTR {
                    break
                }
            }
            done.signal()
        }
        writer.close()
        #expect(done.wait(timeout: .now() + 30) == .success)
        #expect(writer.queuedBytes == 0)
        #expect(writer.writtenRecords + writer.droppedRecords == 3 + burst)
        let packets = try PCAPTestReader.packets(in: drained.bytes)
        #expect(packets.count == writer.writtenRecords)
    }

    @Test(
        "a capture file whose reader goes away stops capture with an error, without killing the process",
        .timeLimit(.minutes(1))
    )
    func brokenPipe() throws {
        let path = temporaryCapturePath("broken-pipe")
        #expect(mkfifo(path, 0o600) == 0)
        defer { unlink(path) }
        let reader = open(path, O_RDONLY | O_NONBLOCK)
        try #require(reader >= 0)
        let writer = try CaptureWriter(path: path)
        close(reader)  // the reader leaves: the writer thread's next write gets EPIPE, not SIGPIPE
        let conversation = writer.conversation(
            client: try SocketAddress(ipAddress: "127.0.0.1", port: 50000),
            server: try SocketAddress(ipAddress: "127.0.0.1", port: 8080)
        )
        let deadline = Date().addingTimeInterval(10)
        while writer.failure == nil, Date() < deadline {
            usleep(1000)
        }
        #expect(writer.failure == CaptureError(path: path, reason: "broken pipe"))
        conversation.record(ByteBuffer(string: "after the failure"), direction: .upstream)
        writer.close()
        #expect(writer.writtenRecords == 0)
        #expect(writer.droppedRecords == 4)  // the handshake and the record after the failure
        #expect(writer.queuedBytes == 0)
    }

    @Test("a huge burst into a regular file keeps the queue within its bound", .timeLimit(.minutes(1)))
    func burstIntoFile() throws {
        let path = temporaryCapturePath("burst")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let bound = 4096
        let writer = try CaptureWriter(path: path, maximumQueuedBytes: bound)
        let conversation = writer.conversation(
            client: try SocketAddress(ipAddress: "127.0.0.1", port: 50000),
            server: try SocketAddress(ipAddress: "127.0.0.1", port: 8080)
        )
        let chunk = ByteBuffer(repeating: 0x41, count: 1400)
        var largestQueue = 0
        for _ in 0..<20_000 {
            conversation.record(chunk, direction: .upstream)
            largestQueue = max(largestQueue, writer.queuedBytes)
        }
        writer.close()
        #expect(largestQueue <= bound)
        #expect(writer.droppedRecords > 0)
        #expect(writer.writtenRecords + writer.droppedRecords == 3 + 20_000)
        #expect(try PCAPTestReader.packets(atPath: path).count == writer.writtenRecords)
    }
}

/// Bytes appended from one thread and read from another.
private final class LockedBytes: @unchecked Sendable {
    private let lock = NSLock()
    private var storage: [UInt8] = []

    func append(_ bytes: ArraySlice<UInt8>) {
        self.lock.lock()
        defer { self.lock.unlock() }
        self.storage += bytes
    }

    var bytes: [UInt8] {
        self.lock.lock()
        defer { self.lock.unlock() }
        return self.storage
    }
}
