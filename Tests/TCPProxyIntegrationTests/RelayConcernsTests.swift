import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The relay concerns of the muduo seed (004): early data, cross-talk, simultaneous close, speed mismatch.
@Suite("Seed 004: relay concerns", .ownThread)
struct RelayConcernsTests {
    @Test(
        "Data sent while the server connection is still being set up (SYN dropped, retried after ~1 s) is delivered",
        .serialized,
        arguments: DataPath.allCases
    )
    func dataBeforeServerConnectionIsUp(path: DataPath) async throws {
        // A listener with backlog 0 and one unaccepted connection drops further SYNs, so the
        // proxy's connect stays pending until the queue frees and the SYN is retransmitted.
        let (server, filler) = try TestServer.withFullQueue()  // connects to it get no answer
        defer { filler.close(); server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, path.arguments)
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        let early = pattern(count: 20_000, seed: 11)
        try client.send(early)
        await delay(seconds: 0.3)
        #expect(
            proxy.lines(containing: "bridge connected").isEmpty,
            "test precondition: the server connection is not up yet while the client sends"
        )

        let fillerAccepted = try server.accept(timeout: 2)
        defer { fillerAccepted.close() }
        let upstream = try await onThread { try server.accept(timeout: 5) }
        defer { upstream.close() }
        let received = try await onThread { try upstream.recvExactly(early.count, timeout: 5) }
        #expect(sameBytes(received, early), "the early bytes arrive intact")

        // The bridge then works normally both ways.
        try client.send("later")
        #expect(try upstream.recvExactly(5, timeout: 5) == bytes("later"))
        try upstream.send("reply")
        #expect(try client.recvExactly(5, timeout: 5) == bytes("reply"))
    }

    @Test(
        "Data and EOF sent before the server connection is up: both arrive, then the reply and EOF come back",
        .serialized,
        arguments: DataPath.allCases
    )
    func dataAndEOFBeforeServerConnectionIsUp(path: DataPath) async throws {
        let (server, filler) = try TestServer.withFullQueue()  // connects to it get no answer
        defer { filler.close(); server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, path.arguments)
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        let early = pattern(count: 30_000, seed: 13)
        try client.send(early)
        client.shutdownWrite()
        await delay(seconds: 0.3)
        #expect(proxy.lines(containing: "bridge connected").isEmpty, "test precondition: connect still pending")

        let fillerAccepted = try server.accept(timeout: 2)
        defer { fillerAccepted.close() }
        let upstream = try await onThread { try server.accept(timeout: 5) }
        defer { upstream.close() }
        let received = try await onThread { try upstream.readToEnd(timeout: 5) }
        #expect(received.end == .eof, "the client's early EOF reaches the server after its data")
        #expect(sameBytes(received.bytes, early))

        try upstream.send("bye")
        upstream.shutdownWrite()
        let reply = try await onThread { try client.readToEnd(timeout: 5) }
        #expect(reply.bytes == bytes("bye"))
        #expect(reply.end == .eof)
        let closed = await proxy.waitForLine(containing: "bridge closed", timeout: 5)
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "completed", "\(closed ?? "no close line")")
    }

    @Test("A client that resets while the server connection is pending: the bridge ends and nothing leaks")
    func clientResetBeforeServerConnectionIsUp() async throws {
        let (server, filler) = try TestServer.withFullQueue()  // connects to it get no answer
        defer { filler.close(); server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port)
        defer { proxy.kill() }
        let baseline = proxy.openFileDescriptorCount()

        let client = try TestSocket.connect(port: proxy.port)
        try client.send("doomed")
        #expect(await proxy.waitForLine(containing: "bridge accepted", timeout: 3) != nil)
        client.resetClose()
        await delay(seconds: 0.2)

        let fillerAccepted = try server.accept(timeout: 2)
        defer { fillerAccepted.close() }
        // The proxy may still complete its connect (then it must end that connection) or abandon it.
        if let upstream = try? await onThread({ try server.accept(timeout: 2.5) }) {
            defer { upstream.close() }
            let end = try await onThread { try upstream.readToEnd(timeout: 3) }
            #expect(end.end.isClosed, "the server's connection is ended, not left open: \(end.end)")
        }
        let closed = await proxy.waitForLine(containing: "bridge closed", timeout: 3)
        #expect(closed != nil, "the bridge is closed")
        let descriptors = await proxy.waitForFileDescriptorCount(atMost: baseline, timeout: 3)
        #expect(descriptors == baseline, "open descriptors \(descriptors), baseline \(baseline)")
    }

    @Test(
        "Server speaks first: a banner sent on accept reaches a client that has sent nothing",
        .serialized,
        arguments: DataPath.allCases
    )
    func serverSpeaksFirst(path: DataPath) async throws {
        let server = try TestServer { socket, _, server in
            try? socket.send("220 banner\r\n", timeout: 5)
            TestServer.echo(socket, 0, server)
        }
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, path.arguments)
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        #expect(try client.recvExactly(12, timeout: 5) == bytes("220 banner\r\n"))
        try client.send("HELO")
        #expect(try client.recvExactly(4, timeout: 5) == bytes("HELO"))
    }

    @Test("Data sent before the server accepts is delivered once it does", .serialized, arguments: DataPath.allCases)
    func dataBeforeServerAccepts(path: DataPath) async throws {
        let server = try TestServer()
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, path.arguments)
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        let early = pattern(count: 100_000, seed: 12)
        try client.send(early)
        client.shutdownWrite()
        await delay(seconds: 0.5)
        let upstream = try await onThread { try server.accept(timeout: 5) }
        defer { upstream.close() }
        let received = try await onThread { try upstream.readToEnd(timeout: 5) }
        #expect(received.end == .eof)
        #expect(sameBytes(received.bytes, early))
    }

    @Test(
        "No cross-talk: 200 concurrent bridges each get back exactly their own payload, then 100 more reuse the descriptors",
        .serialized,
        arguments: DataPath.allCases
    )
    func noCrossTalk(path: DataPath) async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, path.arguments)
        defer { proxy.kill() }

        for (round, count) in [(0, 200), (1, 100)] {
            let mismatches = try await onThread { () -> [Int] in
                let clients = try (0..<count).map { _ in try TestSocket.connect(port: proxy.port, timeout: 10) }
                defer { clients.forEach { $0.close() } }
                let payloads = (0..<count).map { index in
                    bytes(String(format: "round %d client %03d:", round, index))
                        + pattern(count: 3000 + index * 7, seed: UInt64(round * 1000 + index))
                }
                // Interleave: a quarter of every payload on every connection, four times over.
                for quarter in 0..<4 {
                    for (index, client) in clients.enumerated() {
                        let payload = payloads[index]
                        let start = payload.count * quarter / 4
                        let end = payload.count * (quarter + 1) / 4
                        try client.send(Array(payload[start..<end]), timeout: 10)
                    }
                }
                var mismatches: [Int] = []
                for (index, client) in clients.enumerated() {
                    let echoed = try client.recvExactly(payloads[index].count, timeout: 10)
                    if !sameBytes(echoed, payloads[index]) { mismatches.append(index) }
                    client.shutdownWrite()
                }
                for client in clients {
                    _ = try client.readToEnd(timeout: 10)
                }
                return mismatches
            }
            #expect(mismatches.isEmpty, "round \(round): connections with foreign or garbled bytes: \(mismatches)")
        }
        let closed = await proxy.waitForLines(containing: "bridge closed", count: 300, timeout: 10)
        #expect(closed?.count == 300)
    }

    @Test(
        "Simultaneous close from both sides leaves no stuck bridge and no leaked descriptor",
        .serialized,
        arguments: DataPath.allCases
    )
    func simultaneousClose(path: DataPath) async throws {
        let server = try TestServer()
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, path.arguments)
        defer { proxy.kill() }
        let baseline = proxy.openFileDescriptorCount()

        let count = 48
        let pairs = try await onThread { () -> [(TestSocket, TestSocket)] in
            try (0..<count).map { index in
                let client = try TestSocket.connect(port: proxy.port)
                let upstream = try server.accept(timeout: 5)
                try client.send([UInt8(index)])
                _ = try upstream.recvExactly(1, timeout: 5)
                try upstream.send([UInt8(index)])
                _ = try client.recvExactly(1, timeout: 5)
                return (client, upstream)
            }
        }
        #expect(proxy.openFileDescriptorCount() >= baseline + 2 * count)
        for (index, (client, upstream)) in pairs.enumerated() {
            switch index % 4 {
            case 0:
                client.close()
                upstream.close()
            case 1:
                upstream.close()
                client.close()
            case 2:
                client.resetClose()
                upstream.resetClose()
            default:
                client.shutdownWrite()
                upstream.shutdownWrite()
                client.close()
                upstream.close()
            }
        }
        let closed = await proxy.waitForLines(containing: "bridge closed", count: count, timeout: 5)
        #expect(closed?.count == count, "bridges closed: \(proxy.closedLines.count) of \(count)")
        let descriptors = await proxy.waitForFileDescriptorCount(atMost: baseline, timeout: 5)
        #expect(descriptors == baseline, "open descriptors \(descriptors), baseline \(baseline)")
    }

    @Test(
        "Speed mismatch: a fast server and a slow-reading client; memory stays bounded and every byte arrives",
        .serialized,
        arguments: DataPath.allCases
    )
    func speedMismatch(path: DataPath) async throws {
        let total = 64 * megabyte
        let chunk = pattern(count: megabyte, seed: 21)
        let server = try TestServer { socket, _, _ in
            for index in 0..<64 {
                var block = chunk
                block[0] = UInt8(index)
                guard (try? socket.send(block, timeout: 30)) != nil else { return }
            }
        }
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--stall-timeout", "2"] + path.arguments)
        defer { proxy.kill() }
        let baseline = proxy.residentMemoryBytes()

        let client = try TestSocket.connect(port: proxy.port)
        let result = try await onThread { () -> (count: Int, intact: Bool, end: StreamEnd, peak: Int) in
            var received: [UInt8] = []
            received.reserveCapacity(total)
            var peak = 0
            var reads = 0
            let deadline = now() + 30
            while true {
                let next = try client.recv(max: 128 * 1024, timeout: max(0, deadline - now()))
                guard case .data(let data) = next else {
                    guard case .end(let end) = next else { fatalError() }
                    var expected: [UInt8] = []
                    expected.reserveCapacity(total)
                    for index in 0..<64 {
                        var block = chunk
                        block[0] = UInt8(index)
                        expected += block
                    }
                    return (received.count, sameBytes(received, expected), end, peak)
                }
                received += data
                reads += 1
                if reads % 16 == 0 { peak = max(peak, proxy.residentMemoryBytes()) }
                usleep(3000)  // ~128 KB per 3 ms at most: far slower than the server
            }
        }
        let growth = result.peak - baseline
        print("speed mismatch: \(result.count) bytes, RSS baseline \(baseline / 1024) KB, peak \(result.peak / 1024) KB")
        #expect(result.end == .eof)
        #expect(result.count == total)
        #expect(result.intact, "bytes arrive in order and intact")
        #expect(growth < 32 * megabyte, "proxy RSS grew by \(growth / 1024) KB")
        #expect(proxy.lines(containing: "stallTimeout").isEmpty, "a slow but steady reader is never stall-timed-out")
    }

    @Test(
        "A slow reader that keeps taking bytes is never stall-timed-out (stall timeout 2 s, 4 s transfer)",
        .serialized,
        arguments: DataPath.allCases
    )
    func slowProgressIsNotAStall(path: DataPath) async throws {
        let total = 3 * megabyte
        let payload = pattern(count: total, seed: 22)
        let server = try TestServer(handler: TestServer.sendThenClose(payload))
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--stall-timeout", "2"] + path.arguments)
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        client.setReceiveBufferSize(16 * 1024)
        // ~768 KB/s: the proxy's writes to the client stay blocked most of the time, but bytes keep moving.
        let result = try await onThread { () -> (bytes: [UInt8], end: StreamEnd) in
            var received: [UInt8] = []
            // Far beyond the ~4 s this takes alone: with the suite around it the reader thread gets little CPU.
            let deadline = now() + 40
            while true {
                switch try client.recv(max: 8192, timeout: max(0, deadline - now())) {
                case .data(let data):
                    received += data
                    usleep(10_000)
                case .end(let end):
                    return (received, end)
                }
            }
        }
        #expect(result.end == .eof, "\(result.bytes.count) of \(total) bytes; proxy log:\n\(proxy.stderr)")
        #expect(result.bytes.count == total)
        #expect(sameBytes(result.bytes, payload))
        client.shutdownWrite()  // the upstream direction ends too, so the bridge completes
        let closed = await proxy.waitForLine(containing: "bridge closed", timeout: 5)
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "completed", "\(closed ?? "no close line")")
    }
}
