import Foundation
import Logging
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Standard error, written by a thread of its own, so that a reader that stops reading never stops the
/// proxy: log lines are queued (up to ``limit`` bytes) and the thread writes them in order, one `write(2)`
/// per batch. The thread, woken by a first line, waits ``linger`` for more before writing: at thousands of
/// lines a second that is one wakeup and one write per batch instead of per line (woken per line, the
/// thread's context switches cost a proxy on one shared core a fifth of its connection rate). Beyond the limit lines are dropped and counted, and a `warning` line says how many once
/// writing goes on. A terminal paused with Ctrl-S, a pipe to a log shipper that hangs, or `2>&1 | less`
/// left at a page would otherwise block every event loop and engine thread in its next log line.
///
/// What is queued is written out at exit (`atexit`), waiting at most ``exitWait`` for a reader that is stuck.
public final class LogOutput: @unchecked Sendable {
    /// The process's standard error.
    public static let standardError = LogOutput(descriptor: 2)

    /// The most bytes of lines waiting to be written.
    static let limit = 1 << 20
    /// How long exit waits for queued lines to be written.
    static let exitWait = 2.0
    /// How long the thread gathers lines after the first before writing them (so lines show at most this
    /// late, plus scheduling).
    static let linger: UInt32 = 5_000  // microseconds

    private enum State: Int {
        /// Nothing queued, nothing being written.
        case idle
        /// Lines wait to be written.
        case queued
        /// The thread is writing what it took; nothing else waits.
        case writing
    }

    private let descriptor: Int32
    private let state = ConditionLock<Int>(value: State.idle.rawValue)
    // Guarded by `state`.
    private var queue: [UInt8] = []
    private var dropped = 0
    private var format = LogFormat.text
    private var started = false

    init(descriptor: Int32) {
        self.descriptor = descriptor
    }

    /// Queues `line` (newline included) for writing; drops it when ``limit`` bytes already wait.
    /// - Parameter format: the format of the lines, for the line that reports drops; `nil` keeps the last.
    public func append(_ line: String, format: LogFormat? = nil) {
        var line = line
        self.state.lock()
        if let format { self.format = format }
        if !self.started {
            self.started = true
            self.startWriter()
        }
        guard self.queue.count + line.utf8.count <= Self.limit else {
            // Reported by the thread once it has written what waits.
            self.dropped += 1
            self.state.unlock()
            return
        }
        line.withUTF8 { self.queue.append(contentsOf: $0) }
        self.state.unlock(withValue: State.queued.rawValue)
    }

    /// Waits until every queued line is written, at most `timeout` seconds.
    /// - Returns: whether everything was written.
    @discardableResult
    public func flush(timeout: Double) -> Bool {
        guard self.state.lock(whenValue: State.idle.rawValue, timeoutSeconds: timeout) else { return false }
        self.state.unlock()
        return true
    }

    // Called with `state` locked.
    private func startWriter() {
        let thread = Thread { [self] in self.writeForever() }
        thread.name = "tcpproxy-log"
        thread.stackSize = 256 * 1024
        thread.start()
        atexit { LogOutput.standardError.flush(timeout: LogOutput.exitWait) }
    }

    private func writeForever() {
        while true {
            self.state.lock(whenValue: State.queued.rawValue)
            self.state.unlock()
            usleep(Self.linger)
            self.state.lock()
            var batch: [UInt8] = []
            swap(&batch, &self.queue)
            let dropped = self.dropped
            self.dropped = 0
            let format = self.format
            self.state.unlock(withValue: State.writing.rawValue)

            self.writeAll(batch)
            if dropped > 0 {
                self.writeAll(Array(Self.droppedLine(dropped, format: format).utf8))
            }

            self.state.lock()
            self.state.unlock(withValue: self.queue.isEmpty && self.dropped == 0 ? State.idle.rawValue : State.queued.rawValue)
        }
    }

    /// The warning that `count` lines were dropped.
    static func droppedLine(_ count: Int, format: LogFormat) -> String {
        ProxyLogHandler.formatLine(
            format: format,
            time: ProxyLogHandler.timestamp(),
            level: .warning,
            message: "log lines dropped: standard error did not take them fast enough",
            metadata: ["dropped": "\(count)"]
        )
    }

    private func writeAll(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = Glibc.write(self.descriptor, buffer.baseAddress! + offset, buffer.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    return  // EPIPE and the like: the reader is gone, the lines with it
                }
                offset += written
            }
        }
    }
}
