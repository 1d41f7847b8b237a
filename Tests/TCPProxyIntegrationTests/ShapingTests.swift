import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Rate limits, latency, bit flips and data logging on the real binary (issue: shaping and faults).
@Suite("Shaping and faults", .ownThread)
struct ShapingTests {
    /// Bytes per second of a size text such as `16K`.
    /// Everything that arrives within `seconds`, and how the stream ended if it did.
    private static func receive(from client: TestSocket, for seconds: Double) async throws -> (total: Int, end: StreamEnd?) {
        try await onThread {
            let started = now()
            var total = 0
            while now() - started < seconds {
                switch try client.recv(max: 1 << 20, timeout: max(0.01, seconds - (now() - started))) {
                case .data(let bytes): total += bytes.count
                case .end(.timeout): continue
                case .end(let end): return (total, end)
                }
            }
            return (total, nil)
        }
    }

    private static func rate(_ text: String) -> Double {
        let units: [Character: Double] = ["K": 1024, "M": 1024 * 1024]
        guard let last = text.last, let unit = units[last] else { return Double(text)! }
        return Double(text.dropLast())! * unit
    }

    /// A `--downstream-rate`, how close the flow must come to it over 3 s, and an idle timeout that must not
    /// fire (a rate below 16 KiB/s moves in small steps, not a kilobyte and a pause of seconds).
    struct DownstreamCase: Sendable, CustomTestStringConvertible {
        var rate: String
        var tolerance: Double
        var idleTimeout: String? = nil
        var testDescription: String { "\(self.rate)" + (self.idleTimeout.map { " with --idle-timeout \($0)" } ?? "") }
    }

    // Up to 8M here: a debug build sharing the machine with the whole parallel suite cannot always move
    // 20 MiB/s (it fell short, never over); the token bucket itself is checked up to 100M in unit tests.
    @Test(
        "--downstream-rate holds the server-to-client flow within 10% over 3 s (15% at 1K/s, in steps small enough for a 0.5 s idle timeout)",
        arguments: [
            DownstreamCase(rate: "16K", tolerance: 0.10), DownstreamCase(rate: "1M", tolerance: 0.10),
            DownstreamCase(rate: "8M", tolerance: 0.10), DownstreamCase(rate: "1K", tolerance: 0.15, idleTimeout: "0.5"),
        ]
    )
    func downstreamRate(case rateCase: DownstreamCase) async throws {
        let server = try TestServer(handler: TestServer.writeForever)
        defer { server.stop() }
        let idle = rateCase.idleTimeout.map { ["--idle-timeout", $0] } ?? []
        let proxy = try await ProxyProcess.forward(to: server.port, ["--downstream-rate", rateCase.rate] + idle)
        defer { proxy.kill() }
        let client = try TestSocket.connect(port: proxy.port)
        defer { client.close() }
        // Everything that arrives within 3 s of connecting: the token bucket bounds it by rate × 3 s plus
        // one burst (1/16 s), whatever the kernel buffers hold, because nothing passes unmetered.
        let received = try await Self.receive(from: client, for: 3)
        #expect(received.end == nil, "the bridge stayed open: \(proxy.closedLines)")
        let expected = Self.rate(rateCase.rate) * 3
        #expect(
            abs(Double(received.total) - expected) / expected < rateCase.tolerance,
            "received \(received.total) of \(Int(expected))"
        )
    }

    @Test("--downstream-rate 1K pacing out what came with the server's FIN is traffic: a 1 s --idle-timeout does not cut it")
    func pacedAfterFINIsNotIdle() async throws {
        let server = try TestServer(handler: TestServer.sendThenClose(pattern(count: 24 * 1024, seed: 3)))
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--downstream-rate", "1K", "--idle-timeout", "1"])
        defer { proxy.kill() }
        let client = try TestSocket.connect(port: proxy.port)
        defer { client.close() }
        let received = try await Self.receive(from: client, for: 3)
        #expect(received.end == nil, "still flowing at 3 s, not closed: \(proxy.closedLines)")
        #expect(received.total > 2 * 1024 && received.total < 5 * 1024, "about 1 KiB/s: \(received.total) bytes")
    }

    @Test("--upstream-rate holds the client-to-server flow within 10% over 3 s", arguments: ["64K", "2M"])
    func upstreamRate(rate: String) async throws {
        let server = try TestServer(handler: TestServer.discard)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--upstream-rate", rate])
        defer { proxy.kill() }
        let client = try TestSocket.connect(port: proxy.port)
        defer { client.close() }
        // Fill the pipe first so the proxy always has data to read, then measure at the server.
        async let writer = client.writeAsMuchAsPossibleAsync(for: 4.5)
        await delay(seconds: 0.5)
        let before = server.receivedBytes
        let started = now()
        await delay(seconds: 3)
        let measured = server.receivedBytes - before
        // A loaded machine may oversleep: the rate is judged over the time that really passed.
        let elapsed = now() - started
        _ = await writer
        let expected = Self.rate(rate) * elapsed
        #expect(abs(Double(measured) - expected) / expected < 0.10, "measured \(measured) of \(Int(expected))")
    }

    @Test(
        "--upstream-rate 64K still paces a client that sends 256 KiB and its FIN at once (NIO drains the socket on the FIN): no sooner than the rate allows, every byte, then EOF"
    )
    func rateHoldsThroughClientFIN() async throws {
        let server = try TestServer()
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--upstream-rate", "64K"])
        defer { proxy.kill() }
        let client = try TestSocket.connect(port: proxy.port)
        defer { client.close() }
        let data = pattern(count: 256 * 1024, seed: 21)
        let upstream = try await onThread { try server.accept(timeout: 5) }
        defer { upstream.close() }
        let started = now()
        try await onThread {
            try client.send(data)
            client.shutdownWrite()
        }
        let received = try await onThread { try upstream.readToEnd(timeout: 15) }
        let elapsed = now() - started
        #expect(received.end == .eof)
        #expect(sameBytes(received.bytes, data), "every byte, in order (\(received.bytes.count) of \(data.count))")
        // 256 KiB at 64 KiB/s, less two 4 KiB bursts of slack: 3.9 s.
        #expect(elapsed > 3.6 && elapsed < 8, "delivered in \(elapsed) s")
    }

    /// Median round-trip time of `count` small echoes, in seconds.
    private func roundTrip(through proxy: ProxyProcess, count: Int = 5) async throws -> Double {
        let client = try TestSocket.connect(port: proxy.port)
        defer { client.close() }
        return try await onThread {
            var times: [Double] = []
            for index in 0..<count {
                let message = "ping \(index)"
                let started = now()
                try client.send(message)
                _ = try client.recvExactly(message.utf8.count, timeout: 5)
                times.append(now() - started)
            }
            return times.sorted()[count / 2]
        }
    }

    @Test("--latency 100 adds at least 100 ms each way to a round trip; upstream only adds it once")
    func latency() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let both = try await ProxyProcess.forward(to: server.port, ["--latency", "100"])
        defer { both.kill() }
        let upstream = try await ProxyProcess.forward(to: server.port, ["--latency", "100", "--fault-direction", "upstream"])
        defer { upstream.kill() }
        let bothTime = try await self.roundTrip(through: both)
        let upstreamTime = try await self.roundTrip(through: upstream)
        #expect(bothTime >= 0.2 && bothTime < 1.5, "round trip \(bothTime) s with both directions delayed")
        #expect(upstreamTime >= 0.1 && upstreamTime < 0.2 + 0.5, "round trip \(upstreamTime) s with upstream delayed")
    }

    @Test("--latency with jitter keeps every byte in order and keeps back-pressure (2 MB echo)")
    func latencyKeepsOrder() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--latency", "5:10", "--high-water-mark", "16K"])
        defer { proxy.kill() }
        let client = try TestSocket.connect(port: proxy.port)
        defer { client.close() }
        let payload = pattern(count: 2 << 20, seed: 11)
        async let sender: Void = onThread { try client.send(payload, timeout: 30); client.shutdownWrite() }
        let echoed = try await onThread { try client.readToEnd(timeout: 30) }
        try await sender
        #expect(echoed.end == .eof)
        #expect(echoed.bytes == payload, "the echo came back byte for byte, in order")
    }

    /// Sends `count` small messages one at a time through an echo and counts differing bits in each reply.
    private func flippedBits(_ extra: [String], count: Int = 20) async throws -> [Int] {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, extra)
        defer { proxy.kill() }
        let client = try TestSocket.connect(port: proxy.port)
        defer { client.close() }
        return try await onThread {
            var result: [Int] = []
            for index in 0..<count {
                let message = pattern(count: 100, seed: UInt64(index))
                try client.send(message)
                let echo = try client.recvExactly(100, timeout: 5)
                result.append(zip(message, echo).map { ($0 ^ $1).nonzeroBitCount }.reduce(0, +))
            }
            return result
        }
    }

    @Test("--corrupt 1.0 on one direction flips exactly one bit per chunk; --corrupt 0 flips none")
    func corrupt() async throws {
        #expect(try await self.flippedBits(["--corrupt", "1.0", "--fault-direction", "upstream"]) == Array(repeating: 1, count: 20))
        #expect(try await self.flippedBits(["--corrupt", "1", "--fault-direction", "both"]).allSatisfy { $0 == 2 || $0 == 0 })
        #expect(try await self.flippedBits(["--corrupt", "0"]) == Array(repeating: 0, count: 20))
    }

    @Test(
        "--log-data logs a hex dump of each chunk with the bridge id and direction, at any --log-level",
        arguments: ["info", "warning", "error"]
    )
    func logData(level: String) async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--log-data", "--log-level", level])
        defer { proxy.kill() }
        let client = try TestSocket.connect(port: proxy.port)
        defer { client.close() }
        try client.send("LOGDATA-MARK")
        _ = try client.recvExactly(12, timeout: 5)
        let hex = "4c 4f 47 44 41 54 41 2d  4d 41 52 4b"
        let up = await proxy.waitForLine(containing: "direction=upstream", timeout: 5)
        let down = await proxy.waitForLine(containing: "direction=downstream", timeout: 5)
        #expect(up?.contains(hex) == true, "upstream dump: \(up ?? "none")")
        #expect(down?.contains(hex) == true, "downstream dump: \(down ?? "none")")
        #expect(up?.contains("bridge.id=1") == true)
    }

    @Test("bad shaping options are usage errors (exit 64)", arguments: [
        ["--upstream-rate", "fast"], ["--downstream-rate", "0"], ["--latency", "x"], ["--corrupt", "1.5"],
        ["--corrupt", "-0.1"], ["--fault-direction", "sideways"],
    ])
    func badOptions(extra: [String]) async throws {
        let result = try await ProxyProcess.runToExit(["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9"] + extra)
        #expect(result.status == 64, "stderr: \(result.stderr)")
        #expect(result.stderr.contains("Error:"))
    }

    @Test("--latency and the stall timeout together: a server that never reads still gets the bridge aborted")
    func latencyKeepsStallTimeout() async throws {
        // A tiny receive buffer at the server, so the proxy's own write buffer fills once the delayed
        // chunks come out (the delay line passes one high-water mark per delay).
        let server = try TestServer(receiveBufferSize: 4096, handler: TestServer.sinkNeverReads)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--latency", "100", "--stall-timeout", "1"])
        defer { proxy.kill() }
        let client = try TestSocket.connect(port: proxy.port)
        defer { client.close() }
        async let writer = client.writeAsMuchAsPossibleAsync(for: 6)
        let closed = await proxy.waitForLine(containing: "bridge closed", timeout: 15)
        _ = await writer
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "stallTimeout", "\(closed ?? "no close line")")
    }
}
