import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `--capture` and `--metrics` on the real binary.
@Suite("Capture and metrics", .ownThread)
struct VisibilityTests {
    @Test("--capture writes a pcap that tcpdump reads, with the payload both ways and the FINs")
    func capture() async throws {
        let file = try CaptureFile()
        defer { file.remove() }
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--capture", file.path])
        defer { proxy.kill() }
        let client = try TestSocket.connect(port: proxy.port)
        try client.send("CAPTURE-MARKER-UP")
        _ = try client.recvExactly(17, timeout: 5)
        client.shutdownWrite()
        let end = try await onThread { try client.readToEnd(timeout: 5) }
        #expect(end.end == .eof)
        client.close()
        #expect(await proxy.waitForLine(containing: "bridge closed", timeout: 5) != nil)
        await file.stop(proxy)
        #expect(!proxy.stderr.contains("ERROR"), "a clean shutdown, no NIO complaint; stderr:\n\(proxy.stderr)")

        let dump = try file.read(["-nn", "-A"])
        #expect(dump.components(separatedBy: "CAPTURE-MARKER-UP").count - 1 == 2, "payload up and echoed down:\n\(dump)")
        #expect(dump.components(separatedBy: "[F.]").count - 1 == 2, "a FIN each way:\n\(dump)")
        #expect(dump.contains("[S]"), "the synthesized handshake")
    }

    @Test("--capture behind --accept-proxy-protocol names the client the PROXY header announced, as the logs do")
    func captureAnnouncedClient() async throws {
        let file = try CaptureFile()
        defer { file.remove() }
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--capture", file.path, "--accept-proxy-protocol"])
        defer { proxy.kill() }
        let client = try TestSocket.connect(port: proxy.port)
        try client.send("PROXY TCP4 198.51.100.7 203.0.113.9 40123 443\r\nANNOUNCED")
        _ = try client.recvExactly(9, timeout: 5)
        client.close()
        let accepted = try #require(await proxy.waitForLine(containing: "bridge accepted", timeout: 5))
        #expect(accepted.contains("client.address=198.51.100.7:40123"), "\(accepted)")
        #expect(await proxy.waitForLine(containing: "bridge closed", timeout: 5) != nil)
        await file.stop(proxy)

        let dump = try file.read(["-nn"])
        let lines = dump.split(separator: "\n")
        #expect(!lines.isEmpty)
        #expect(
            lines.allSatisfy { $0.contains("198.51.100.7.40123 >") || $0.contains("> 198.51.100.7.40123:") },
            "every packet is to or from the announced client:\n\(dump)"
        )
    }

    @Test("--capture records how an idle timeout ended bridges: a FIN each way for a quiet one, a reset for one cut short")
    func captureTimeoutEnds() async throws {
        let file = try CaptureFile()
        defer { file.remove() }
        // Connection 0 echoes, then both ends fall quiet; connection 1 writes to a client that never reads.
        let server = try TestServer { socket, index, server in
            if index == 0 { TestServer.echo(socket, index, server) } else { TestServer.writeForever(socket, index, server) }
        }
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--capture", file.path, "--idle-timeout", "1"])
        defer { proxy.kill() }
        let quiet = try TestSocket.connect(port: proxy.port)
        defer { quiet.close() }
        try quiet.send("QUIET")
        #expect(try quiet.recvExactly(5, timeout: 5) == bytes("QUIET"))
        let flooded = try TestSocket.connect(port: proxy.port)
        defer { flooded.close() }
        #expect(await proxy.waitForLines(containing: "bridge closed", count: 2, timeout: 8) != nil)
        #expect(await quiet.waitForEnd(timeout: 5).end == .eof)
        await file.stop(proxy)

        let dump = try file.read(["-nn"])
        #expect(dump.components(separatedBy: "[F.]").count - 1 == 2, "the quiet bridge's FIN each way:\n\(dump.suffix(2000))")
        #expect(dump.components(separatedBy: "[R.]").count - 1 == 1, "the cut bridge's reset:\n\(dump.suffix(2000))")
    }

    @Test("--capture to a file that cannot be written exits 1 with one line")
    func captureUnwritable() async throws {
        let result = try await ProxyProcess.runToExit([
            "forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--capture", "/nonexistent-dir/x.pcap",
        ])
        #expect(result.status == 1, "stderr: \(result.stderr)")
        #expect(result.stderr.contains("/nonexistent-dir/x.pcap"))
    }

    @Test(
        "--metrics serves Prometheus text whose counters match the traffic; other paths get 404",
        .serialized,
        arguments: DataPath.allCases
    )
    func metrics(path: DataPath) async throws {
        let curl = "/usr/bin/curl"
        try #require(FileManager.default.isExecutableFile(atPath: curl), "curl is not installed")
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--metrics", "127.0.0.1:0"] + path.arguments)
        defer { proxy.kill() }
        let line = try #require(await proxy.waitForLine(containing: "metrics served at", timeout: 5))
        let address = line.components(separatedBy: "metrics served at ")[1].prefix { $0 != " " && $0 != "\"" }
        let url = "http://\(address)"

        let client = try TestSocket.connect(port: proxy.port)
        let payload = pattern(count: 12345, seed: 5)
        try client.send(payload)
        _ = try client.recvExactly(payload.count, timeout: 5)
        client.shutdownWrite()
        _ = try await onThread { try client.readToEnd(timeout: 5) }
        client.close()
        #expect(await proxy.waitForLine(containing: "bridge closed", timeout: 5) != nil)

        let text = try runTool(curl, ["-sS", "\(url)/metrics"]).output
        func value(_ name: String, _ label: String? = nil) -> Double? {
            text.split(separator: "\n").first { line in
                line.hasPrefix(name) && (label.map { line.contains($0) } ?? true)
            }.flatMap { Double($0.split(separator: " ").last!) }
        }
        #expect(value("tcpproxy_bytes_total", "direction=\"upstream\"") == 12345, "\(text)")
        #expect(value("tcpproxy_bytes_total", "direction=\"downstream\"") == 12345)
        #expect(value("tcpproxy_connections_accepted_total") == 1)
        #expect(value("tcpproxy_bridges_active") == 0)
        #expect(value("tcpproxy_bridges_closed_total", "reason=\"completed\"") == 1)
        #expect(text.contains("listener=\"forward\""))

        let missing = try runTool(curl, ["-s", "-o", "/dev/null", "-w", "%{http_code}", "\(url)/nope"]).output
        #expect(missing == "404")
    }
}

extension VisibilityTests {
    @Test(
        "--capture into a pipe whose reader stopped reading: SIGTERM still exits (after the capture's 10 s), a second one at once",
        arguments: [1, 2]
    )
    func captureToStuckPipe(signals: Int) async throws {
        let pipe = try StuckPipe()
        defer { pipe.remove() }
        let server = try TestServer(handler: TestServer.discard)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--capture", pipe.path, "--drain-timeout", "1"])
        defer { proxy.kill() }
        // More than the pipe takes (64 KiB): the writer blocks in write(2) with records still queued.
        let client = try TestSocket.connect(port: proxy.port)
        try client.send(pattern(count: 300_000, seed: 4), timeout: 10)
        client.close()
        #expect(await proxy.waitForLine(containing: "bridge closed", timeout: 5) != nil)

        let started = now()
        proxy.terminate()
        if signals == 2 {
            #expect(await proxy.waitForLine(containing: "listener stopped", timeout: 5) != nil, "\(proxy.stderr)")
            proxy.terminate()
            #expect(await proxy.waitForExit(timeout: 5) == 0)
            #expect(now() - started < 5, "the second signal exits at once")
        } else {
            #expect(await proxy.waitForExit(timeout: 20) == 0)
            #expect(proxy.stderr.contains("capture file left incomplete"), "\(proxy.stderr)")
        }
    }

    @Test(
        "--metrics counts an open bridge's bytes as they flow, with both timeouts off (no timer of their own)",
        .serialized,
        arguments: DataPath.allCases
    )
    func metricsWhileOpen(path: DataPath) async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(
            to: server.port, ["--metrics", "127.0.0.1:0", "--stall-timeout", "0"] + path.arguments
        )
        defer { proxy.kill() }
        let client = try TestSocket.connect(port: proxy.port)
        defer { client.close() }
        // Round trips over more than the report interval (1 s); the bridge stays open throughout.
        let chunk = pattern(count: 1000, seed: 9)
        for _ in 0..<12 {
            try client.send(chunk)
            #expect(try client.recvExactly(chunk.count, timeout: 5) == chunk)
            await delay(seconds: 0.1)
        }
        var text = ""
        var counted: (up: Double?, down: Double?) = (nil, nil)
        for _ in 0..<30 {
            text = try await PrometheusText.scrape(proxy)
            counted = (
                PrometheusText.value(text, "tcpproxy_bytes_total", "direction=\"upstream\""),
                PrometheusText.value(text, "tcpproxy_bytes_total", "direction=\"downstream\"")
            )
            if counted.up == 12000 && counted.down == 12000 { break }
            await delay(seconds: 0.1)
        }
        #expect(counted.up == 12000 && counted.down == 12000, "\(text)")
        #expect(PrometheusText.value(text, "tcpproxy_bridges_active") == 1, "still open: \(text)")
    }
}

/// A pcap file for one test, read back with tcpdump (installed by `.ci/run`).
private struct CaptureFile {
    static let tcpdump = "/usr/bin/tcpdump"
    let path = NSTemporaryDirectory() + "tcpproxy-capture-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).pcap"

    init() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.tcpdump), "tcpdump is not installed (.ci/run installs it)")
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: self.path)
    }

    /// Stops the capturing proxy with SIGTERM, which must exit 0 (the file is complete then). It waits past the
    /// capture drop reporter's first run (1 s), so that the reporter is scheduled when the loops stop.
    func stop(_ proxy: ProxyProcess) async {
        await delay(seconds: 1.2)
        proxy.terminate()
        #expect(await proxy.waitForExit(timeout: 10) == 0)
    }

    /// What `tcpdump OPTIONS -r FILE` prints; the test fails if tcpdump cannot read the file.
    func read(_ options: [String]) throws -> String {
        let dump = try runTool(Self.tcpdump, options + ["-r", self.path])
        #expect(dump.status == 0, "tcpdump could not read the file")
        return dump.output
    }
}

/// Runs a command, returning its exit status and standard output.
private func runTool(_ path: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = FileHandle.nullDevice
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}
