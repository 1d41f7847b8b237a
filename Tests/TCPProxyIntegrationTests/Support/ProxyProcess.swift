import Foundation

#if canImport(Glibc)
import Glibc
#endif

enum ProxyProcessError: Error, CustomStringConvertible {
    case binaryNotFound([String])
    case notListening(String)

    var description: String {
        switch self {
        case .binaryNotFound(let candidates):
            return "tcpproxy binary not found; looked at \(candidates.joined(separator: ", ")); set TCPPROXY_BIN"
        case .notListening(let log):
            return "tcpproxy did not log 'listening on' in time; its output was:\n\(log)"
        }
    }
}

/// One `tcpproxy` child process: its stderr collected line by line, its listening port, and ways to stop it.
/// Tests `defer { proxy.kill() }` so the process never outlives its test.
final class ProxyProcess: @unchecked Sendable {
    let process: Process
    let pid: Int32
    /// The address from the `listening on HOST:PORT` line ("" until it appears).
    private(set) var listenHost = ""
    private(set) var port = 0

    private let lock = NSLock()
    private var stderrLines: [String] = []
    private var stdoutLines: [String] = []

    /// `TCPPROXY_BIN`, else `tcpproxy` next to the test bundle, else `.build/debug/tcpproxy` in the package root.
    static func binaryURL() throws -> URL {
        var candidates: [String] = []
        if let fromEnvironment = ProcessInfo.processInfo.environment["TCPPROXY_BIN"], !fromEnvironment.isEmpty {
            candidates.append(fromEnvironment)
        }
        let bundleDirectory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        candidates.append(bundleDirectory.appendingPathComponent("tcpproxy").path)
        candidates.append(Bundle.main.bundleURL.deletingLastPathComponent().appendingPathComponent("tcpproxy").path)
        var directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        while directory.path != "/" {
            if FileManager.default.fileExists(atPath: directory.appendingPathComponent("Package.swift").path) {
                candidates.append(directory.appendingPathComponent(".build/debug/tcpproxy").path)
                break
            }
            directory.deleteLastPathComponent()
        }
        for candidate in candidates where FileManager.default.isExecutableFile(atPath: candidate) {
            return URL(fileURLWithPath: candidate)
        }
        throw ProxyProcessError.binaryNotFound(candidates)
    }

    /// Starts `tcpproxy ARGUMENTS` without waiting for anything; with a `launcher` (`setpriv ...`), as
    /// `LAUNCHER... tcpproxy ARGUMENTS`.
    init(arguments: [String], launcher: [String] = []) throws {
        let process = Process()
        let binary = try ProxyProcess.binaryURL()
        if let program = launcher.first {
            process.executableURL = URL(fileURLWithPath: program)
            process.arguments = launcher.dropFirst() + [binary.path] + arguments
        } else {
            process.executableURL = binary
            process.arguments = arguments
        }
        process.standardInput = FileHandle.nullDevice
        let stderrPipe = Pipe()
        let stdoutPipe = Pipe()
        process.standardError = stderrPipe
        process.standardOutput = stdoutPipe
        try process.run()
        self.process = process
        self.pid = process.processIdentifier
        // The child holds its own copies of the write ends; ours must close so the readers see EOF.
        try? stderrPipe.fileHandleForWriting.close()
        try? stdoutPipe.fileHandleForWriting.close()
        self.startReader(stderrPipe.fileHandleForReading, isStderr: true)
        self.startReader(stdoutPipe.fileHandleForReading, isStderr: false)
    }

    /// Starts `tcpproxy ARGUMENTS` (through `launcher`, if any) and waits for its `listening on` line.
    static func start(_ arguments: [String], launcher: [String] = [], timeout: Double = 15) async throws -> ProxyProcess {
        let proxy = try ProxyProcess(arguments: arguments, launcher: launcher)
        // The proxy's own listener line: "listening on ...", not the metrics endpoint's "metrics served at ...".
        // It carries the configured level when that is above info.
        guard let line = await proxy.waitForLine(containing: " listening on ", timeout: timeout)
            ?? proxy.lines(containing: "\"listening on").first
        else {
            proxy.kill()
            throw ProxyProcessError.notListening(proxy.stderr)
        }
        // The address ends at a space (text format) or a quote (JSON format).
        let address = String(line.components(separatedBy: "listening on ")[1].prefix { $0 != " " && $0 != "\"" })
        if let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) {
            proxy.listenHost = String(address[..<colon])
            proxy.port = port
        } else {
            proxy.kill()
            throw ProxyProcessError.notListening(proxy.stderr)
        }
        return proxy
    }

    /// `tcpproxy forward --listen 127.0.0.1:0 --target 127.0.0.1:TARGET_PORT EXTRA...`
    static func forward(to targetPort: Int, _ extra: [String] = []) async throws -> ProxyProcess {
        try await start(["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:\(targetPort)"] + extra)
    }

    /// Runs `tcpproxy ARGUMENTS` to completion (bounded): exit status (nil if it had to be killed) and output.
    static func runToExit(_ arguments: [String], timeout: Double = 15) async throws
        -> (status: Int32?, stderr: String, stdout: String)
    {
        let proxy = try ProxyProcess(arguments: arguments)
        defer { proxy.kill() }
        let status = await proxy.waitForExit(timeout: timeout)
        // Let the readers collect the last bytes.
        for _ in 0..<50 where !proxy.readersDone { try? await Task.sleep(nanoseconds: 10_000_000) }
        return (status, proxy.stderr, proxy.stdout)
    }

    private var finishedReaders = 0
    private var readersDone: Bool { self.lock.withLock { self.finishedReaders == 2 } }

    private func startReader(_ handle: FileHandle, isStderr: Bool) {
        let fd = handle.fileDescriptor
        let thread = Thread { [self] in
            var partial: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
                if count < 0 && errno == EINTR { continue }
                if count <= 0 { break }
                partial.append(contentsOf: buffer[0..<count])
                var lines: [String] = []
                while let newline = partial.firstIndex(of: UInt8(ascii: "\n")) {
                    lines.append(String(decoding: partial[..<newline], as: UTF8.self))
                    partial.removeSubrange(...newline)
                }
                if !lines.isEmpty { self.append(lines, isStderr: isStderr) }
            }
            if !partial.isEmpty { self.append([String(decoding: partial, as: UTF8.self)], isStderr: isStderr) }
            self.lock.withLock { self.finishedReaders += 1 }
            try? handle.close()
        }
        thread.start()
    }

    private func append(_ lines: [String], isStderr: Bool) {
        self.lock.withLock {
            if isStderr { self.stderrLines.append(contentsOf: lines) } else { self.stdoutLines.append(contentsOf: lines) }
        }
    }

    // MARK: Output

    var lines: [String] { self.lock.withLock { self.stderrLines } }
    var stderr: String { self.lines.joined(separator: "\n") }
    var stdout: String { self.lock.withLock { self.stdoutLines.joined(separator: "\n") } }

    func lines(containing text: String) -> [String] { self.lines.filter { $0.contains(text) } }

    /// The `bridge closed` lines so far.
    var closedLines: [String] { self.lines(containing: "bridge closed") }

    /// Waits (polling, without holding a thread) for a stderr line containing `text`.
    func waitForLine(containing text: String, timeout: Double) async -> String? {
        await self.waitForLines(containing: text, count: 1, timeout: timeout)?.first
    }

    /// Waits for at least `count` stderr lines containing `text`; nil on timeout.
    func waitForLines(containing text: String, count: Int, timeout: Double) async -> [String]? {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let found = self.lines(containing: text)
            if found.count >= count { return found }
            if Date() >= deadline { return nil }
            try? await Task.sleep(nanoseconds: 10_000_000)
        }
    }

    // MARK: Signals and exit

    var isRunning: Bool { self.process.isRunning }

    /// SIGTERM (graceful: stop accepting, drain).
    func terminate() { self.signal(SIGTERM) }

    /// SIGKILL, by PID, if still running. Safe to call more than once.
    func kill() {
        if self.process.isRunning { _ = Glibc.kill(self.pid, SIGKILL) }
    }

    func signal(_ signal: Int32) {
        if self.process.isRunning { _ = Glibc.kill(self.pid, signal) }
    }

    /// SIGSTOP, then waits (up to 5 s) until every thread of the process has stopped; false if one has not.
    /// kill(2) only queues the signal: a thread that is running, or waiting for a CPU on a loaded machine, goes
    /// on accepting and reading until it next leaves the kernel (seen: a client accepted and closed after it).
    func pause() async -> Bool {
        self.signal(SIGSTOP)
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline {
            if self.allThreadsStopped { return true }
            try? await Task.sleep(nanoseconds: 1_000_000)
        }
        return false
    }

    /// SIGCONT after ``pause()``.
    func resume() { self.signal(SIGCONT) }

    /// Whether every thread's state in /proc/PID/task/TID/stat is `T` (stopped).
    private var allThreadsStopped: Bool {
        let tasks = "/proc/\(self.pid)/task"
        guard let threads = try? FileManager.default.contentsOfDirectory(atPath: tasks), !threads.isEmpty else { return false }
        return threads.allSatisfy { thread in
            guard let stat = try? String(contentsOfFile: "\(tasks)/\(thread)/stat", encoding: .utf8),
                let name = stat.range(of: ") ", options: .backwards)
            else { return false }
            return stat[name.upperBound...].first == "T"
        }
    }

    /// The exit status, or nil if the process is still running at the deadline.
    func waitForExit(timeout: Double) async -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while self.process.isRunning {
            if Date() >= deadline { return nil }
            try? await Task.sleep(nanoseconds: 10_000_000)
        }
        return self.process.terminationStatus
    }

    /// How the process ended: `.exit` or `.uncaughtSignal`.
    var terminationReason: Process.TerminationReason { self.process.terminationReason }

    // MARK: /proc

    /// Entries in /proc/PID/fd.
    func openFileDescriptorCount() -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(self.pid)/fd").count) ?? -1
    }

    /// VmRSS from /proc/PID/status, in bytes.
    func residentMemoryBytes() -> Int {
        guard let status = try? String(contentsOfFile: "/proc/\(self.pid)/status", encoding: .utf8) else { return -1 }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            let kilobytes = line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first
            return (kilobytes.flatMap { Int($0) } ?? -1) * 1024
        }
        return -1
    }

    /// Polls until the open-fd count is `target` (or less); returns the last count seen.
    func waitForFileDescriptorCount(atMost target: Int, timeout: Double) async -> Int {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let count = self.openFileDescriptorCount()
            if count <= target || Date() >= deadline { return count }
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
    }
}

/// Reads `key=value` (or `key="quoted value"`) out of a text-format log line.
func logValue(_ key: String, in line: String) -> String? {
    guard let range = line.range(of: " \(key)=") else { return nil }
    let rest = line[range.upperBound...]
    if rest.hasPrefix("\"") {
        let body = rest.dropFirst()
        return String(body.prefix { $0 != "\"" })
    }
    return String(rest.prefix { $0 != " " })
}
