import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// `tcpproxy ARGUMENTS` whose standard error is a pipe the test reads only when it says so, and may stop
/// reading or close: a log reader that stalls or goes away. (``ProxyProcess`` reads everything at once.)
final class PipedProxy {
    let process = Process()
    private let pipe = Pipe()
    private var readerClosed = false

    init(_ arguments: [String]) throws {
        self.process.executableURL = try ProxyProcess.binaryURL()
        self.process.arguments = arguments
        self.process.standardInput = FileHandle.nullDevice
        self.process.standardOutput = FileHandle.nullDevice
        self.process.standardError = self.pipe
        try self.process.run()
        try? self.pipe.fileHandleForWriting.close()
    }

    var pid: Int32 { self.process.processIdentifier }

    /// Reads what the pipe holds until `text` appears, at most `timeout` seconds; what was read.
    func read(until text: String, timeout: Double) -> String {
        let reader = self.pipe.fileHandleForReading.fileDescriptor
        var read = ""
        let deadline = now() + timeout
        while !self.readerClosed, !read.contains(text), now() < deadline {
            var entry = pollfd(fd: reader, events: Int16(POLLIN), revents: 0)
            guard Glibc.poll(&entry, 1, 100) >= 0 else { break }
            guard entry.revents != 0 else { continue }
            var buffer = [UInt8](repeating: 0, count: 65536)
            let count = Glibc.read(reader, &buffer, buffer.count)
            guard count > 0 else { break }
            read += String(decoding: buffer[..<count], as: UTF8.self)
        }
        return read
    }

    /// Reads up to the `listening on` line: the port it names.
    func port() throws -> Int {
        let ready = self.read(until: "listening on", timeout: 10)
        let address = ready.components(separatedBy: "listening on ").dropFirst().first?.prefix { $0 != " " }
        guard let port = address.flatMap({ Int($0.split(separator: ":").last ?? "") }) else {
            throw ProxyProcessError.notListening(ready)
        }
        return port
    }

    /// Goes away as the reader: the proxy's next write to the pipe fails with EPIPE.
    func closeReader() throws {
        self.readerClosed = true
        try self.pipe.fileHandleForReading.close()
    }

    /// Waits (bounded) for the process to end: whether it exited with status 0 rather than by a signal.
    func exitedCleanly(within timeout: Double) async -> Bool {
        let deadline = now() + timeout
        while self.process.isRunning && now() < deadline { await delay(seconds: 0.02) }
        return !self.process.isRunning && self.process.terminationReason == .exit && self.process.terminationStatus == 0
    }

    func kill() {
        if self.process.isRunning { Glibc.kill(self.pid, SIGKILL) }
    }
}
