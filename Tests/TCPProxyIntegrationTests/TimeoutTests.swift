import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// SPEC §2.6-7: the stall timeout is judged per direction; progress (however slow) is not a stall;
/// the idle timeout counts traffic either way.
@Suite("Stall and idle timeouts", .ownThread)
struct TimeoutTests {
    /// A server handler that reads (and discards) on a second thread while `write` runs; returns once both end.
    static func readingWhile(_ write: @escaping @Sendable (TestSocket, TestServer) -> Void) -> TestServer.Handler {
        { socket, _, server in
            let done = DispatchSemaphore(value: 0)
            let reader = Thread {
                let end = server.readLoop(socket) { data in
                    server.countReceived(data.count)
                    return true
                }
                server.recordEnd(end)
                done.signal()
            }
            reader.start()
            write(socket, server)
            done.wait()
        }
    }

    @Test(
        "Downstream stalled (client never reads) while upstream stays busy: still closed by the stall timeout",
        .serialized,
        arguments: DataPath.allCases
    )
    func downstreamStallWithUpstreamActive(path: DataPath) async throws {
        let server = try TestServer(handler: Self.readingWhile { socket, server in
            TestServer.writeForever(socket, 0, server)
        })
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--stall-timeout", "2"] + path.arguments)
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        client.setReceiveBufferSize(4096)
        let started = now()
        var closed: String?
        // The client keeps sending a little upstream (which the server reads) but never reads downstream.
        while now() - started < 8 {
            if case .failure = client.trySend(bytes("tick")) { break }
            closed = proxy.closedLines.first
            if closed != nil { break }
            await delay(seconds: 0.2)
        }
        closed = await proxy.waitForLine(containing: "bridge closed", timeout: 1)
        let elapsed = now() - started
        let line = try #require(closed, "the bridge was not closed within 8 s although downstream was stalled")
        #expect(logValue("close.reason", in: line) == "stallTimeout", "\(line)")
        #expect((1.5...6).contains(elapsed), "closed after \(elapsed) s")
        #expect(server.receivedBytes > 0, "upstream was flowing")
    }

    @Test(
        "Upstream stalled (server never reads) while downstream stays busy: still closed by the stall timeout",
        .serialized,
        arguments: DataPath.allCases
    )
    func upstreamStallWithDownstreamActive(path: DataPath) async throws {
        // The server never reads; it sends a byte every 0.2 s, which the client reads.
        let server = try TestServer { socket, _, server in
            let started = now()
            while !server.shouldStop(since: started) {
                if (try? socket.send([0x2E], timeout: 1)) == nil { return }
                usleep(200_000)
            }
        }
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--stall-timeout", "2"] + path.arguments)
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        let started = now()
        async let writer = client.writeAsMuchAsPossibleAsync(for: 8)
        var downstream = 0
        var closed: String?
        while now() - started < 8 {
            if case .data(let data) = client.tryRecv() { downstream += data.count }
            closed = proxy.closedLines.first
            if closed != nil { break }
            await delay(seconds: 0.05)
        }
        let elapsed = now() - started
        let line = try #require(closed, "the bridge was not closed within 8 s although upstream was stalled")
        #expect(logValue("close.reason", in: line) == "stallTimeout", "\(line)")
        #expect((1.5...6).contains(elapsed), "closed after \(elapsed) s")
        #expect(downstream > 0, "downstream was flowing")
        _ = await writer
    }

    @Test("A fractional stall timeout (0.5 s) fires", .serialized, arguments: DataPath.allCases)
    func fractionalStallTimeout(path: DataPath) async throws {
        let server = try TestServer(handler: TestServer.sinkNeverReads)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--stall-timeout", "0.5"] + path.arguments)
        defer { proxy.kill() }
        // The bound is about the option being honoured (well before the 10 s default), not about speed: a
        // close took 0.76–0.82 s alone but up to 3.1 s with the whole parallel suite on a 2-core machine.
        try await SeedChecksTests.expectStallTimeout(proxy: proxy, direction: .forward, within: 0.3...6)
    }

    @Test(
        "A slow server that keeps reading (upstream) is never stall-timed-out (stall timeout 2 s, ~4 s transfer)",
        .serialized,
        arguments: DataPath.allCases
    )
    func slowUpstreamProgressIsNotAStall(path: DataPath) async throws {
        let total = 3 * megabyte
        let payload = pattern(count: total, seed: 71)
        let received = Shared<[UInt8]>([])
        let server = try TestServer(receiveBufferSize: 16 * 1024) { socket, _, server in
            let end = server.readLoop(socket, max: 8192) { data in
                received.update { $0 += data }
                usleep(10_000)  // ~800 KB/s
                return true
            }
            server.recordEnd(end)
            if end == .eof { socket.shutdownWrite() }
        }
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--stall-timeout", "2"] + path.arguments)
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        try await onThread {
            var offset = 0
            while offset < total {
                try client.send(Array(payload[offset..<min(total, offset + 65536)]), timeout: 20)
                offset += 65536
            }
            client.shutdownWrite()
        }
        let end = await client.waitForEnd(timeout: 20)
        #expect(end.end == .eof, "the bridge ends normally: \(end.end)")
        #expect(received.value.count == total)
        #expect(sameBytes(received.value, payload))
        let closed = await proxy.waitForLine(containing: "bridge closed", timeout: 3)
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "completed", "\(closed ?? "no close line")")
    }

    @Test(
        "--idle-timeout 2: traffic in one direction only keeps the bridge open; silence then closes it",
        .serialized,
        arguments: DataPath.allCases
    )
    func idleTimeoutCountsOneWayTraffic(path: DataPath) async throws {
        let server = try TestServer(handler: TestServer.discard)
        defer { server.stop() }
        // Sends every 0.25 s against a 2 s timeout: room for a loaded machine to delay this task.
        let proxy = try await ProxyProcess.forward(to: server.port, ["--idle-timeout", "2"] + path.arguments)
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        let started = now()
        var lastSend = started
        while now() - started < 3 {
            try client.send("z")
            lastSend = now()
            await delay(seconds: 0.25)
        }
        #expect(proxy.closedLines.isEmpty, "closed while upstream traffic flowed: \(proxy.closedLines)")
        #expect(client.peekEnd() == nil)
        let end = await client.waitForEnd(timeout: 8)
        #expect(end.end.isClosed)
        // Timed from the last byte sent, not from the end of the loop: a loaded machine may oversleep the
        // last 0.25 s delay by most of a second.
        let quiet = now() - lastSend
        #expect((1.9...7).contains(quiet), "closed \(quiet) s after the last byte was sent")
        let closed = await proxy.waitForLine(containing: "bridge closed", timeout: 2)
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "idleTimeout", "\(closed ?? "no close line")")
    }

    @Test(
        "--idle-timeout 1: an upload the proxy read in full but the kernel still sends to a slow server is traffic; the answer arrives",
        .serialized,
        arguments: DataPath.allCases
    )
    func idleTimeoutCountsDrainingSendQueue(path: DataPath) async throws {
        let upload = SlowAnsweredUpload()
        let server = try upload.server()
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(
            to: server.port,
            ["--idle-timeout", "1", "--stall-timeout", "0"] + path.arguments
        )
        defer { proxy.kill() }
        try await upload.run(through: proxy.port)
        let closed = await proxy.waitForLine(containing: "bridge closed", timeout: 3)
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "completed", "\(closed ?? "no close line")")
    }

    @Test(
        "--idle-timeout and --drain-timeout cutting a download short: the client gets a reset, not an EOF that would pass for the end",
        .serialized,
        arguments: DataPath.allCases, ["idle", "drain"]
    )
    func cutDownloadResets(path: DataPath, timeout: String) async throws {
        let server = try TestServer(handler: TestServer.writeForever)
        defer { server.stop() }
        let option = timeout == "idle" ? ["--idle-timeout", "1"] : ["--drain-timeout", "1"]
        let proxy = try await ProxyProcess.forward(to: server.port, option + path.arguments)
        defer { proxy.kill() }

        // The client reads nothing: the proxy's buffer and both sockets' queues fill, and traffic stops.
        let client = try TestSocket.connect(port: proxy.port)
        defer { client.close() }
        #expect(await server.waitForAccepted(1, timeout: 5))
        await delay(seconds: 0.5)
        if timeout == "drain" { proxy.terminate() }
        let closed = try #require(await proxy.waitForLine(containing: "bridge closed", timeout: 6))
        #expect(logValue("close.reason", in: closed) == "\(timeout)Timeout", "\(closed)")
        let received = try await onThread { try client.drainToEnd(timeout: 10) }
        #expect(received.count > 0)
        #expect(received.end == .reset, "the cut shows as a reset after \(received.count) bytes, got \(received.end)")
    }

    @Test(
        "--idle-timeout cutting an upload short (the server reads nothing, the client sent its FIN): the client gets a reset, not a FIN",
        .serialized,
        arguments: DataPath.allCases
    )
    func cutUploadResets(path: DataPath) async throws {
        let server = try TestServer(handler: TestServer.sinkNeverReads)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--idle-timeout", "1", "--stall-timeout", "0"] + path.arguments)
        defer { proxy.kill() }
        let client = try TestSocket.connect(port: proxy.port)
        defer { client.close() }
        #expect(await server.waitForAccepted(1, timeout: 5))
        // More than the server's socket, the proxy and the client's socket hold: the client cannot send it all.
        let written = await client.writeAsMuchAsPossibleAsync(for: 1)
        #expect(written.written > 0)
        client.shutdownWrite()
        let closed = try #require(await proxy.waitForLine(containing: "bridge closed", timeout: 6))
        #expect(logValue("close.reason", in: closed) == "idleTimeout", "\(closed)")
        let end = await client.waitForEnd(timeout: 5)
        #expect(end.end == .reset, "the cut upload shows as a reset, got \(end.end)")
    }
}

/// An upload of 400 KB and a FIN to a server that reads 32 KiB every 0.1 s through a 16 KiB socket (~1.3 s),
/// then answers `RESPONSE`: for an idle timeout of 1 s, the upload the proxy has read in full is still
/// draining from the kernel's send queue when a second passes.
struct SlowAnsweredUpload {
    let total = 400_000
    let payload = pattern(count: 400_000, seed: 72)
    let received = Shared<[UInt8]>([])

    func server() throws -> TestServer {
        let received = self.received
        return try TestServer(receiveBufferSize: 16 * 1024) { socket, _, server in
            let end = server.readLoop(socket, max: 32 * 1024) { data in
                received.update { $0 += data }
                usleep(100_000)
                return true
            }
            server.recordEnd(end)
            if end == .eof {
                try? socket.send("RESPONSE")
                socket.shutdownWrite()
            }
        }
    }

    /// Uploads through `port` and expects the answer and every byte at the server.
    func run(through port: Int) async throws {
        let client = try TestSocket.connect(port: port)
        defer { client.close() }
        let payload = self.payload
        try await onThread {
            try client.send(payload, timeout: 20)
            client.shutdownWrite()
        }
        let answer = try await onThread { try client.readToEnd(timeout: 20) }
        #expect(answer.end == .eof && answer.bytes == Array("RESPONSE".utf8), "the answer arrives: \(answer)")
        let intact = sameBytes(self.received.value, payload)
        #expect(intact, "the server got \(self.received.value.count) of \(self.total) bytes, intact: \(intact)")
    }
}
