import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The splice data path (`--splice`): that it is really taken, when `auto` takes it, and what it must not
/// change. SPEC §2 itself is checked on both paths by the suites it belongs to (see ``DataPath``).
@Suite("Splice path", .ownThread)
struct SpliceTests {
    /// Sends `total` bytes into `client` in 64 KiB pieces, then SHUT_WR.
    private static func upload(_ client: TestSocket, total: Int, timeout: Double = 30) throws {
        let chunk = [UInt8](repeating: 0x5A, count: 65536)
        var sent = 0
        while sent < total {
            let count = min(chunk.count, total - sent)
            try client.send(Array(chunk[0..<count]), timeout: timeout)
            sent += count
        }
        client.shutdownWrite()
    }

    @Test(
        "--splice always moves the bytes through two pipes per bridge; --splice never uses none",
        .serialized,
        arguments: DataPath.allCases
    )
    func pipesDuringTransfer(path: DataPath) async throws {
        // The server reads slowly, so the transfer is still under way when the pipes are counted.
        let server = try TestServer { socket, _, server in
            let end = server.readLoop(socket, max: 16384) { data in
                server.countReceived(data.count)
                usleep(2000)
                return true
            }
            server.recordEnd(end)
            if end == .eof { socket.shutdownWrite() }
        }
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, path.arguments)
        defer { proxy.kill() }
        let baseline = proxy.pipeDescriptorCount()

        let client = try TestSocket.connect(port: proxy.port)
        let total = 16 * megabyte
        async let sent: Void = onThread { try Self.upload(client, total: total) }
        #expect(await server.waitForAccepted(1, timeout: 5))
        // At least one sample, however fast the upload goes.
        var during = proxy.pipeDescriptorCount()
        for _ in 0..<50 where server.receivedBytes < total / 2 {
            await delay(seconds: 0.05)
            during = max(during, proxy.pipeDescriptorCount())
        }
        try await sent
        let end = await client.waitForEnd(timeout: 30)
        #expect(end.end == .eof)
        #expect(server.receivedBytes == total)
        switch path {
        case .nio, .direct, .directSyscalls: #expect(during == baseline, "no pipes without splicing: \(during), baseline \(baseline)")
        case .splice, .directSplice:
            #expect(during == baseline + 4, "two pipes while spliced: \(during), baseline \(baseline)")
        }
        let closed = try #require(await proxy.waitForLine(containing: "bridge closed", timeout: 5))
        #expect(logValue("close.reason", in: closed) == "completed")
        #expect(logValue("bytes.upstream", in: closed) == "\(total)")
        #expect(proxy.pipeDescriptorCount() == baseline, "the pipes are closed with the bridge")
    }

    @Test(
        "--splice auto: a request/response exchange is not spliced; a bulk transfer beside it is; the metrics count every byte once",
        arguments: ["nio", "direct"]
    )
    func autoChoosesByTraffic(engine: String) async throws {
        let server = try TestServer { socket, index, server in
            // Connection 0 echoes small messages; connection 1 is a sink for bulk.
            if index == 0 { TestServer.echo(socket, index, server) } else { TestServer.discard(socket, index, server) }
        }
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(
            to: server.port,
            ["--engine", engine, "--splice", "auto", "--log-level", "debug", "--metrics", "127.0.0.1:0"]
        )
        defer { proxy.kill() }
        let baseline = proxy.pipeDescriptorCount()

        let chatty = try TestSocket.connect(port: proxy.port)
        #expect(await server.waitForAccepted(1, timeout: 5))
        try await onThread {
            for index in 0..<300 {
                let message = bytes(String(format: "GET /%05d HTTP/1.1\r\n\r\n", index))
                try chatty.send(message)
                #expect(try chatty.recvExactly(message.count, timeout: 5) == message)
            }
        }
        #expect(proxy.lines(containing: "bridge spliced").isEmpty, "small exchanges are not spliced")
        #expect(proxy.pipeDescriptorCount() == baseline)

        let bulk = try TestSocket.connect(port: proxy.port)
        let total = 32 * megabyte
        try await onThread { try Self.upload(bulk, total: total) }
        let spliced = try #require(
            await proxy.waitForLine(containing: "bridge spliced", timeout: 5),
            "the bulk bridge moved to the splice engine"
        )
        #expect(logValue("bridge.id", in: spliced) == "2")
        let end = await bulk.waitForEnd(timeout: 30)
        #expect(end.end == .eof)
        let closed = try #require(await proxy.waitForLine(containing: "bridge closed", timeout: 5))
        #expect(logValue("bridge.id", in: closed) == "2")
        #expect(logValue("bytes.upstream", in: closed) == "\(total)", "bytes before and after the handover add up")

        // The chatty bridge still works, still not spliced.
        try chatty.send("last")
        #expect(try chatty.recvExactly(4, timeout: 5) == bytes("last"))
        #expect(proxy.lines(containing: "bridge spliced").count == 1)

        // What NIO moved before the handover and what the engine moved after it reach the metrics once.
        chatty.close()
        #expect(await proxy.waitForLines(containing: "bridge closed", count: 2, timeout: 5) != nil)
        let text = try await PrometheusText.scrape(proxy)
        let chattyBytes = 300 * 23 + 4
        #expect(PrometheusText.value(text, "tcpproxy_bytes_total", "direction=\"upstream\"") == Double(chattyBytes + total), "\(text)")
        #expect(PrometheusText.value(text, "tcpproxy_bytes_total", "direction=\"downstream\"") == Double(chattyBytes))
    }

    @Test("a spliced bridge holds its --max-connections slot until it really ends", arguments: ["nio", "direct"])
    func slotHeldWhileSpliced(engine: String) async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(
            to: server.port,
            ["--engine", engine, "--max-connections", "1", "--splice", "always", "--log-level", "debug"]
        )
        defer { proxy.kill() }

        let first = try TestSocket.connect(port: proxy.port)
        try first.send("ping")
        #expect(try first.recvExactly(4, timeout: 5) == bytes("ping"))
        if engine == "nio" { #expect(await proxy.waitForLine(containing: "bridge spliced", timeout: 5) != nil) }

        let second = try TestSocket.connect(port: proxy.port)
        let end = await second.waitForEnd(timeout: 3)
        #expect(end.end.isClosed, "a second client is turned away while the spliced bridge is open: \(end.end)")
        #expect(await proxy.waitForLine(containing: "connection rejected", timeout: 3) != nil)

        first.shutdownWrite()
        #expect(try first.readToEnd(timeout: 5).end == .eof)
        #expect(await proxy.waitForLine(containing: "bridge closed", timeout: 5) != nil)
        let third = try TestSocket.connect(port: proxy.port)
        try third.send("pong")
        #expect(try third.recvExactly(4, timeout: 5) == bytes("pong"), "the slot is free once the bridge ended")
    }

    @Test(
        "--splice auto: a bulk upload to a slow reader moves to splice without pausing the other direction",
        arguments: ["nio", "direct"]
    )
    func handoverDoesNotPauseTheOtherDirection(engine: String) async throws {
        // The server reads slowly (about 1.6 MB/s) and sends a byte every 20 ms the whole time.
        let server = try TestServer { socket, _, server in
            let ticker = Thread {
                let started = now()
                while !server.shouldStop(since: started), (try? socket.send([0x2E], timeout: 1)) != nil {
                    usleep(20_000)
                }
            }
            ticker.start()
            let end = server.readLoop(socket, max: 8192) { data in
                server.countReceived(data.count)
                usleep(5000)
                return true
            }
            server.recordEnd(end)
        }
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(
            to: server.port,
            ["--engine", engine, "--splice", "auto", "--log-level", "debug"]
        )
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        let total = 6 * megabyte
        async let sent: Void = onThread { try Self.upload(client, total: total) }
        let gaps = try await onThread { () -> (longest: Double, count: Int) in
            var last = now()
            var longest = 0.0
            var count = 0
            let deadline = now() + 20
            while now() < deadline, server.receivedBytes < total {
                guard case .data(let data) = try client.recv(max: 4096, timeout: 2) else { break }
                count += data.count
                longest = max(longest, now() - last)
                last = now()
            }
            return (longest, count)
        }
        try await sent
        #expect(server.receivedBytes == total)
        #expect(await proxy.waitForLine(containing: "bridge spliced", timeout: 1) != nil, "the upload was spliced")
        #expect(gaps.count > 50, "downstream bytes kept coming: \(gaps.count)")
        #expect(gaps.longest < 1.0, "the longest pause downstream was \(gaps.longest) s")
    }
}
