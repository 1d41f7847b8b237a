import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Admission limits, timeouts, connect failures, and bounded memory and descriptors.
@Suite("Limits, timeouts and resources", .ownThread)
struct LimitsTests {
    @Test(
        "--max-connections 2: a third client is closed at once and logged limitReached; after one leaves, a new one works",
        .serialized,
        arguments: DataPath.allCases
    )
    func maxConnections(path: DataPath) async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--max-connections", "2"] + path.arguments)
        defer { proxy.kill() }

        let first = try TestSocket.connect(port: proxy.port)
        let second = try TestSocket.connect(port: proxy.port)
        for client in [first, second] {
            try client.send("ping")
            #expect(try client.recvExactly(4, timeout: 5) == bytes("ping"))
        }

        let third = try TestSocket.connect(port: proxy.port)
        let started = now()
        let end = await third.waitForEnd(timeout: 3)
        #expect(end.end.isClosed, "the third client is closed: \(end.end)")
        #expect(now() - started < 2)
        let rejected = await proxy.waitForLine(containing: "connection rejected", timeout: 3)
        #expect(rejected.flatMap { logValue("close.reason", in: $0) } == "limitReached", "\(rejected ?? "no rejection line")")
        #expect(server.acceptedCount == 2, "the rejected client never reached the server")

        first.close()
        #expect(await proxy.waitForLine(containing: "bridge closed", timeout: 5) != nil)
        let fourth = try TestSocket.connect(port: proxy.port)
        try fourth.send("pong")
        #expect(try fourth.recvExactly(4, timeout: 5) == bytes("pong"), "a client is admitted again once one has left")
        try second.send("more")
        #expect(try second.recvExactly(4, timeout: 5) == bytes("more"))
    }

    @Test("--max-connections 1: a client that resets while the server connect is pending gives its slot back")
    func slotFreedAfterResetDuringConnect() async throws {
        let (server, filler) = try TestServer.withFullQueue()  // connects to it get no answer
        defer { filler.close(); server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--max-connections", "1"])
        defer { proxy.kill() }

        let doomed = try TestSocket.connect(port: proxy.port)
        try doomed.send("doomed")
        #expect(await proxy.waitForLine(containing: "bridge accepted", timeout: 3) != nil)
        doomed.resetClose()
        await delay(seconds: 0.2)
        let fillerAccepted = try server.accept(timeout: 2)
        defer { fillerAccepted.close() }
        let abandoned = try? await onThread { try server.accept(timeout: 2.5) }  // the proxy's retried SYN, if any
        defer { abandoned?.close() }
        await delay(seconds: 0.3)

        let next = try TestSocket.connect(port: proxy.port)
        try next.send("next")
        let upstream = try? await onThread { try server.accept(timeout: 3) }
        defer { upstream?.close() }
        #expect(upstream != nil, "the next client is bridged; log:\n\(proxy.stderr)")
        #expect(proxy.lines(containing: "limitReached").isEmpty, "the slot was not given back; log:\n\(proxy.stderr)")
        if let upstream {
            #expect(try upstream.recvExactly(4, timeout: 5) == bytes("next"))
        }
    }

    @Test("--allow 10.0.0.0/8 closes a client from 127.0.0.1 and logs notAllowed")
    func allowRejects() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--allow", "10.0.0.0/8"])
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        _ = client.trySend(bytes("hello"))
        let end = await client.waitForEnd(timeout: 3)
        #expect(end.end.isClosed, "the client is closed: \(end.end)")
        #expect(end.count == 0)
        let rejected = await proxy.waitForLine(containing: "connection rejected", timeout: 3)
        #expect(rejected.flatMap { logValue("close.reason", in: $0) } == "notAllowed", "\(rejected ?? "no rejection line")")
        #expect(server.acceptedCount == 0)
    }

    @Test("--allow 127.0.0.0/8 (with another network) admits a client from 127.0.0.1")
    func allowAdmits() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--allow", "10.0.0.0/8", "--allow", "127.0.0.0/8"])
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        try client.send("hello")
        #expect(try client.recvExactly(5, timeout: 5) == bytes("hello"))
        #expect(proxy.lines(containing: "connection rejected").isEmpty)
    }

    @Test(
        "--idle-timeout 1 closes a bridge with no traffic, with a FIN (nothing was pending), and logs idleTimeout",
        .serialized,
        arguments: DataPath.allCases
    )
    func idleTimeout(path: DataPath) async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--idle-timeout", "1"] + path.arguments)
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        try client.send("ping")
        #expect(try client.recvExactly(4, timeout: 5) == bytes("ping"))
        let started = now()
        let end = await client.waitForEnd(timeout: 5)
        let elapsed = now() - started
        #expect(end.end == .eof, "the idle client is closed with a FIN: \(end.end)")
        #expect((0.8...4).contains(elapsed), "closed after \(elapsed) s")
        let closed = await proxy.waitForLine(containing: "bridge closed", timeout: 2)
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "idleTimeout", "\(closed ?? "no close line")")
    }

    @Test(
        "Connect failure (nothing listens on the target port): the client, which sent early data, is closed promptly; connect failed, connectFailed",
        .serialized,
        arguments: DataPath.allCases
    )
    func connectFailure(path: DataPath) async throws {
        let proxy = try await ProxyProcess.forward(to: refusedPort, path.arguments)
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        _ = client.trySend(bytes("early data"))
        let started = now()
        let end = await client.waitForEnd(timeout: 5)
        // Either: a refusal can come before the early bytes do, and bytes that reach a closed socket draw a
        // reset from the kernel (the timeout test below sees the clean close).
        #expect(end.end.isClosed, "the client is closed: \(end.end)")
        #expect(now() - started < 2, "promptly: \(now() - started) s")
        let closed = await proxy.waitForLine(containing: "bridge closed", timeout: 3)
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "connectFailed", "\(closed ?? "no close line")")
        #expect(proxy.lines(containing: "bridge connect failed").count == 1, "\(proxy.stderr)")
    }

    @Test(
        "Connect refused with the clients' bytes already waiting in their sockets: each client gets a FIN, not a reset",
        .serialized,
        arguments: DataPath.allCases
    )
    func connectFailureAfterEarlyData(path: DataPath) async throws {
        let proxy = try await ProxyProcess.forward(to: refusedPort, path.arguments)
        defer { proxy.kill() }
        // Stopped, the proxy accepts nothing: the clients' bytes are in their sockets before it sees them.
        #expect(await proxy.pause(), "the proxy stopped")
        var clients: [TestSocket] = []
        for _ in 0..<5 {
            let client = try TestSocket.connect(port: proxy.port)
            try client.send("early data")
            clients.append(client)
        }
        // Acknowledged means queued in the proxy's socket; under load the loopback can still be delivering.
        for client in clients { #expect(await client.waitUntilAcknowledged(timeout: 5)) }
        proxy.resume()
        for client in clients {
            let end = await client.waitForEnd(timeout: 5)
            #expect(end.end == .eof, "a FIN, not a reset: \(end.end)")
            client.close()
        }
        #expect(await proxy.waitForLines(containing: "bridge closed", count: 5, timeout: 5) != nil)
        for line in proxy.lines(containing: "bridge closed") {
            #expect(logValue("close.reason", in: line) == "connectFailed", "\(line)")
            // Read as early data, by NIO as the bridge closes, or dropped by the proxy: counted every way.
            #expect(logValue("bytes.upstream", in: line) == "10", "the early bytes were dropped: \(line)")
        }
    }

    @Test(
        "--connect-timeout 1 with a target that never answers the SYN: the client gets a clean close after it; connect failed, then connectTimeout",
        .serialized,
        arguments: DataPath.allCases
    )
    func connectTimeout(path: DataPath) async throws {
        let (server, filler) = try TestServer.withFullQueue()  // connects to it get no answer
        defer { filler.close(); server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--connect-timeout", "1"] + path.arguments)
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        try client.send("early")
        let started = now()
        let end = await client.waitForEnd(timeout: 6)
        let elapsed = now() - started
        #expect(end.end == .eof, "a FIN, not a reset: \(end.end)")
        #expect((0.7...4).contains(elapsed), "closed after \(elapsed) s")
        let closed = await proxy.waitForLine(containing: "bridge closed", timeout: 3)
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "connectTimeout", "\(closed ?? "no close line")")
        #expect(closed.flatMap { logValue("bytes.upstream", in: $0) } == "5", "the early bytes were read: \(closed ?? "-")")
        let failed = proxy.lines(containing: "bridge connect failed")
        #expect(failed.count == 1, "\(proxy.stderr)")
        // The same words on every engine.
        #expect(failed.first.flatMap { logValue("error", in: $0) } == "connection timed out after 1 s", "\(failed)")
    }

    @Test("--connect-timeout 1 with two targets that never answer: each gets half, and the log names the whole timeout")
    func connectTimeoutOverTargets() async throws {
        let (first, firstFiller) = try TestServer.withFullQueue()
        defer { firstFiller.close(); first.stop() }
        let (second, secondFiller) = try TestServer.withFullQueue()
        defer { secondFiller.close(); second.stop() }
        let proxy = try await ProxyProcess.forward(
            to: first.port, ["--target", "127.0.0.1:\(second.port)", "--connect-timeout", "1"])
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        let started = now()
        let end = await client.waitForEnd(timeout: 6)
        let elapsed = now() - started
        #expect(end.end == .eof, "a FIN, not a reset: \(end.end)")
        #expect((0.7...4).contains(elapsed), "closed after \(elapsed) s")
        let failed = await proxy.waitForLine(containing: "bridge connect failed", timeout: 3)
        // Not the last target's share of it ("after 499873125 ns").
        #expect(failed.flatMap { logValue("error", in: $0) } == "connection timed out after 1 s", "\(failed ?? "-")")
    }

    @Test(
        "Memory: pushing up to 300 MB into a server that never reads (stall timeout off) grows RSS < 32 MB",
        .serialized,
        arguments: DataPath.allCases
    )
    func memoryBoundedWithBlockedServer(path: DataPath) async throws {
        let server = try TestServer(handler: TestServer.sinkNeverReads)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--stall-timeout", "0"] + path.arguments)
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        #expect(await server.waitForAccepted(1, timeout: 5))
        await delay(seconds: 0.2)
        let baseline = proxy.residentMemoryBytes()
        let result = try await onThread { () -> (written: Int, end: StreamEnd?, peak: Int) in
            let chunk = [UInt8](repeating: 0x33, count: megabyte)
            let deadline = now() + 3
            var written = 0
            var peak = 0
            var lastSample = 0.0
            while now() < deadline && written < 300 * megabyte {
                switch client.trySend(chunk) {
                case .success(let count) where count > 0: written += count
                case .success: _ = try? client.poll(events: Int16(POLLOUT), timeout: 0.05)
                case .failure(let error):
                    if case .ended(_, let end) = error { return (written, end, peak) }
                    return (written, .error(EIO), peak)
                }
                if now() - lastSample > 0.05 {
                    peak = max(peak, proxy.residentMemoryBytes())
                    lastSample = now()
                }
            }
            return (written, nil, max(peak, proxy.residentMemoryBytes()))
        }
        let growth = result.peak - baseline
        print("blocked server: client wrote \(result.written / 1024) KB; RSS baseline \(baseline / 1024) KB, peak \(result.peak / 1024) KB")
        #expect(result.end == nil, "the bridge stays up with the stall timeout off: \(String(describing: result.end))")
        #expect(growth < 32 * megabyte, "proxy RSS grew by \(growth / 1024) KB")
        #expect(result.written < 100 * megabyte, "the proxy stopped reading: only \(result.written / 1024) KB got in")
        #expect(proxy.isRunning)
    }

    @Test(
        "Memory: 300 MB through a fast sink grows RSS < 32 MB and every byte is counted",
        .serialized,
        arguments: DataPath.allCases
    )
    func memoryBoundedWithFastSink(path: DataPath) async throws {
        let server = try TestServer(handler: TestServer.discard)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, path.arguments)
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        #expect(await server.waitForAccepted(1, timeout: 5))
        let baseline = proxy.residentMemoryBytes()
        let total = 300 * megabyte
        let peak = try await onThread { () -> Int in
            let chunk = [UInt8](repeating: 0x44, count: megabyte)
            var peak = 0
            for index in 0..<(total / megabyte) {
                try client.send(chunk, timeout: 30)
                if index % 8 == 0 { peak = max(peak, proxy.residentMemoryBytes()) }
            }
            client.shutdownWrite()
            return peak
        }
        let end = await client.waitForEnd(timeout: 30)
        #expect(end.end == .eof)
        #expect(server.receivedBytes == total, "server got \(server.receivedBytes) of \(total) bytes")
        let growth = peak - baseline
        print("fast sink: RSS baseline \(baseline / 1024) KB, peak \(peak / 1024) KB")
        #expect(growth < 32 * megabyte, "proxy RSS grew by \(growth / 1024) KB")
        let closed = await proxy.waitForLine(containing: "bridge closed", timeout: 5)
        #expect(closed.flatMap { logValue("bytes.upstream", in: $0) } == "\(total)")
    }

    @Test(
        "Memory: 64 MB through an echo server (both directions at once) grows RSS < 32 MB, byte-exact",
        .serialized,
        arguments: DataPath.allCases
    )
    func memoryBoundedWithEcho(path: DataPath) async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, path.arguments)
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        try client.send("warm")
        _ = try client.recvExactly(4, timeout: 5)
        let baseline = proxy.residentMemoryBytes()
        let chunk = pattern(count: megabyte, seed: 41)
        let total = 64 * megabyte
        async let writer: Void = onThread {
            for _ in 0..<(total / megabyte) { try client.send(chunk, timeout: 30) }
            client.shutdownWrite()
        }
        let read = try await onThread { () -> (count: Int, intact: Bool, end: StreamEnd, peak: Int) in
            var intact = true
            var peak = 0
            var reads = 0
            let result = try client.drainToEnd(timeout: 60) { slice, offset in
                // Each byte at stream offset k must equal chunk[k % 1 MB].
                var position = offset % megabyte
                var start = slice.startIndex
                while start < slice.endIndex && intact {
                    let length = min(slice.endIndex - start, megabyte - position)
                    let equal = slice.withUnsafeBytes { got in
                        chunk.withUnsafeBytes { want in
                            memcmp(got.baseAddress! + (start - slice.startIndex), want.baseAddress! + position, length) == 0
                        }
                    }
                    if !equal { intact = false }
                    start += length
                    position = 0
                }
                reads += 1
                if reads % 32 == 0 { peak = max(peak, proxy.residentMemoryBytes()) }
            }
            return (result.count, intact, result.end, peak)
        }
        try await writer
        #expect(read.end == .eof)
        #expect(read.count == total)
        #expect(read.intact)
        let growth = read.peak - baseline
        print("echo: RSS baseline \(baseline / 1024) KB, peak \(read.peak / 1024) KB")
        #expect(growth < 32 * megabyte, "proxy RSS grew by \(growth / 1024) KB")
    }

    @Test(
        "Small and large --high-water-mark values still carry 4 MB both ways byte for byte",
        .serialized,
        arguments: ["512", "1K", "1M"], DataPath.allCases
    )
    func highWaterMarkValues(size: String, path: DataPath) async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--high-water-mark", size] + path.arguments)
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        let payload = pattern(count: 4 * megabyte, seed: 81)
        async let writer: Void = onThread {
            var offset = 0
            while offset < payload.count {
                try client.send(Array(payload[offset..<min(payload.count, offset + 65536)]), timeout: 30)
                offset += 65536
            }
            client.shutdownWrite()
        }
        let echoed = try await onThread { try client.readToEnd(timeout: 30) }
        try await writer
        #expect(echoed.end == .eof)
        #expect(echoed.bytes.count == payload.count)
        #expect(sameBytes(echoed.bytes, payload))
    }

    @Test("Descriptors return to the baseline after 50 bridges close", .serialized, arguments: DataPath.allCases)
    func descriptorsReturnToBaseline(path: DataPath) async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, path.arguments)
        defer { proxy.kill() }
        let baseline = proxy.openFileDescriptorCount()

        let clients = try await onThread {
            try (0..<50).map { index -> TestSocket in
                let client = try TestSocket.connect(port: proxy.port)
                try client.send([UInt8(index)])
                _ = try client.recvExactly(1, timeout: 5)
                return client
            }
        }
        #expect(proxy.openFileDescriptorCount() >= baseline + 100, "two descriptors per open bridge")
        for (index, client) in clients.enumerated() {
            switch index % 3 {
            case 0:
                client.shutdownWrite()
                _ = try client.readToEnd(timeout: 5)
                client.close()
            case 1: client.close()
            default: client.resetClose()
            }
        }
        let closed = await proxy.waitForLines(containing: "bridge closed", count: 50, timeout: 5)
        #expect(closed?.count == 50)
        let count = await proxy.waitForFileDescriptorCount(atMost: baseline, timeout: 5)
        #expect(count == baseline, "open descriptors \(count), baseline \(baseline)")
    }
}
