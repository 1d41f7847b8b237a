import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Real programs through the proxy: curl against Python's http.server.
@Suite("Real clients: curl and python3 http.server", .ownThread)
struct RealClientsTests {
    static let curl = "/usr/bin/curl"

    /// A child process (python3, curl) with its output collected; killed by PID at the end.
    final class Child: @unchecked Sendable {
        let process = Process()
        private let lock = NSLock()
        private var output = ""
        private var outputEnded = false

        init(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) throws {
            self.process.executableURL = URL(fileURLWithPath: executable)
            self.process.arguments = arguments
            if let environment { self.process.environment = environment }
            self.process.standardInput = FileHandle.nullDevice
            let pipe = Pipe()
            self.process.standardOutput = pipe
            self.process.standardError = pipe
            try self.process.run()
            try? pipe.fileHandleForWriting.close()
            let handle = pipe.fileHandleForReading
            let thread = Thread { [self] in
                var buffer = [UInt8](repeating: 0, count: 4096)
                while true {
                    let count = buffer.withUnsafeMutableBytes { Glibc.read(handle.fileDescriptor, $0.baseAddress, $0.count) }
                    if count < 0 && errno == EINTR { continue }
                    if count <= 0 { break }
                    let text = String(decoding: buffer[0..<count], as: UTF8.self)
                    self.lock.withLock { self.output += text }
                }
                try? handle.close()
                self.lock.withLock { self.outputEnded = true }
            }
            thread.start()
        }

        var text: String { self.lock.withLock { self.output } }

        /// Waits (bounded) until the reader has seen the end of the child's output: after the child exits,
        /// its last bytes may still sit in the pipe.
        func waitForOutputEnd(timeout: Double) async {
            let deadline = now() + timeout
            while !self.lock.withLock({ self.outputEnded }) && now() < deadline {
                await delay(seconds: 0.01)
            }
        }

        func waitForOutput(containing needle: String, timeout: Double) async -> Bool {
            let deadline = now() + timeout
            while !self.text.contains(needle) {
                if now() >= deadline || !self.process.isRunning { return self.text.contains(needle) }
                await delay(seconds: 0.02)
            }
            return true
        }

        func waitForExit(timeout: Double) async -> Int32? {
            let deadline = now() + timeout
            while self.process.isRunning {
                if now() >= deadline { return nil }
                await delay(seconds: 0.01)
            }
            return self.process.terminationStatus
        }

        func kill() {
            if self.process.isRunning { _ = Glibc.kill(self.process.processIdentifier, SIGKILL) }
        }
    }

    /// `python3 -m http.server` on 127.0.0.1:0 serving `directory`; returns the child and its port.
    static func startHTTPServer(directory: URL) async throws -> (Child, Int) {
        let server = try Child(
            "/usr/bin/env", ["python3", "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", directory.path])
        guard await server.waitForOutput(containing: "Serving HTTP on", timeout: 10) else {
            server.kill()
            throw SocketError.timeout("python3 http.server did not start: \(server.text)")
        }
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let afterPort = server.text.components(separatedBy: " port ").dropFirst().first ?? ""
        guard let port = Int(afterPort.prefix { $0.isNumber }) else {
            server.kill()
            throw SocketError.timeout("no port in: \(server.text)")
        }
        return (server, port)
    }

    static func temporaryDirectory() throws -> URL {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("tcpproxy-tests-\(getpid())-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        return directory
    }

    @Test("curl downloads a 5 MB file and a small page through the proxy, byte for byte", .enabled(if: FileManager.default.isExecutableFile(atPath: curl), "curl is not installed"))
    func curlThroughProxy() async throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let big = Data(pattern(count: 5 * megabyte, seed: 51))
        try big.write(to: directory.appendingPathComponent("big.bin"))
        try Data("hello through the proxy\n".utf8).write(to: directory.appendingPathComponent("small.txt"))

        let (http, httpPort) = try await Self.startHTTPServer(directory: directory)
        defer { http.kill() }
        let proxy = try await ProxyProcess.forward(to: httpPort)
        defer { proxy.kill() }

        let output = directory.appendingPathComponent("downloaded.bin")
        let base = "http://127.0.0.1:\(proxy.port)"
        // Two URLs in one curl run: the second may reuse the connection.
        let curl = try Child(Self.curl, [
            "--silent", "--show-error", "--fail", "--noproxy", "*", "--max-time", "20",
            "-o", output.path, "\(base)/big.bin",
            "-o", directory.appendingPathComponent("small.out").path, "\(base)/small.txt",
        ])
        defer { curl.kill() }
        let status = await curl.waitForExit(timeout: 25)
        #expect(status == 0, "curl exit \(String(describing: status)): \(curl.text)")
        let downloaded = try Data(contentsOf: output)
        #expect(downloaded.count == big.count)
        #expect(downloaded == big, "the 5 MB body arrives intact")
        let small = try String(contentsOf: directory.appendingPathComponent("small.out"), encoding: .utf8)
        #expect(small == "hello through the proxy\n")
        #expect(await proxy.waitForLine(containing: "bridge closed", timeout: 5) != nil)
        #expect(proxy.closedLines.allSatisfy { logValue("close.reason", in: $0) == "completed" }, "\(proxy.closedLines)")
    }

    @Test("Eight curl clients in parallel through one proxy all get the right file", .enabled(if: FileManager.default.isExecutableFile(atPath: curl), "curl is not installed"))
    func parallelCurls() async throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        var files: [Data] = []
        for index in 0..<8 {
            let data = Data(pattern(count: 200_000 + index * 1000, seed: UInt64(60 + index)))
            try data.write(to: directory.appendingPathComponent("file\(index).bin"))
            files.append(data)
        }
        let (http, httpPort) = try await Self.startHTTPServer(directory: directory)
        defer { http.kill() }
        let proxy = try await ProxyProcess.forward(to: httpPort)
        defer { proxy.kill() }

        let curls = try (0..<8).map { index in
            try Child(Self.curl, [
                "--silent", "--show-error", "--fail", "--noproxy", "*", "--max-time", "20",
                "-o", directory.appendingPathComponent("out\(index).bin").path,
                "http://127.0.0.1:\(proxy.port)/file\(index).bin",
            ])
        }
        defer { curls.forEach { $0.kill() } }
        for (index, curl) in curls.enumerated() {
            let status = await curl.waitForExit(timeout: 25)
            #expect(status == 0, "curl \(index) exit \(String(describing: status)): \(curl.text)")
            let got = try? Data(contentsOf: directory.appendingPathComponent("out\(index).bin"))
            #expect(got == files[index], "file \(index) intact")
        }
    }
}
