import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The ten checks of the lab's `test-tcpproxy` (seed 003), reproduced in our own code.
@Suite("Seed 003: the lab's ten checks", .ownThread)
struct SeedChecksTests {
    @Test(
        "Single echo connection: 10 four-byte messages, each echoed before the next",
        .serialized,
        arguments: DataPath.allCases
    )
    func singleEchoConnection(path: DataPath) async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, path.arguments)
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        for index in 0..<10 {
            let message = bytes(String(format: "m%03d", index))
            try client.send(message)
            #expect(try client.recvExactly(4, timeout: 5) == message, "message \(index)")
        }
        client.shutdownWrite()
        let rest = try client.readToEnd(timeout: 5)
        #expect(rest.bytes.isEmpty)
        #expect(rest.end == .eof)
        let closed = try #require(await proxy.waitForLine(containing: "bridge closed", timeout: 5))
        #expect(logValue("close.reason", in: closed) == "completed")
        #expect(logValue("bytes.upstream", in: closed) == "40")
        #expect(logValue("bytes.downstream", in: closed) == "40")
    }

    @Test(
        "Two and 20 echo connections: data read from connection i is written to connection i+1",
        .serialized,
        arguments: [2, 20], DataPath.allCases
    )
    func echoChain(length: Int, path: DataPath) async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, path.arguments)
        defer { proxy.kill() }

        let chain = try (0..<length).map { _ in try TestSocket.connect(port: proxy.port) }
        try await onThread {
            for round in 0..<5 {
                let message = bytes(String(format: "c%03d", round))
                try chain[0].send(message)
                for index in 0..<length {
                    let hop = try chain[index].recvExactly(4, timeout: 5)
                    if index + 1 < length {
                        try chain[index + 1].send(hop)
                    } else {
                        #expect(hop == message, "round \(round) arrived intact at the end of the chain")
                    }
                }
            }
        }
        for socket in chain { socket.shutdownWrite() }
        for (index, socket) in chain.enumerated() {
            let rest = try socket.readToEnd(timeout: 5)
            #expect(rest.bytes.isEmpty && rest.end == .eof, "connection \(index) ends with EOF")
        }
        let closed = await proxy.waitForLines(containing: "bridge closed", count: length, timeout: 5)
        #expect(closed?.count == length)
        #expect(closed?.allSatisfy { logValue("close.reason", in: $0) == "completed" } == true)
    }

    @Test(
        "Bulk data: 2 MB through a chain of 20 connections arrives byte for byte",
        .serialized,
        arguments: DataPath.allCases
    )
    func bulkDataThroughTwentyConnections(path: DataPath) async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, path.arguments)
        defer { proxy.kill() }

        let payload = pattern(count: 2 * megabyte, seed: 3)
        let result = try await Self.runChain(length: 20, proxyPort: proxy.port, payload: payload)
        #expect(result.end == .eof)
        #expect(result.bytes.count == payload.count)
        #expect(firstDifference(result.bytes, payload) == nil)
    }

    @Test(
        "Mix of blocked and normal: the bulk chain completes beside a lazy-forward and a lazy-reverse bridge",
        arguments: [[], ["--threads", "1"]], DataPath.allCases
    )
    func blockedMixedWithNormal(extra: [String], path: DataPath) async throws {
        // Connection 0: the server never reads. Connection 1: the server writes forever and the client never reads.
        let server = try TestServer { socket, index, server in
            switch index {
            case 0: TestServer.sinkNeverReads(socket, index, server)
            case 1: TestServer.writeForever(socket, index, server)
            default: TestServer.echo(socket, index, server)
            }
        }
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, extra + path.arguments)
        defer { proxy.kill() }

        let lazyForward = try TestSocket.connect(port: proxy.port)
        #expect(await server.waitForAccepted(1, timeout: 5))
        let lazyReverse = try TestSocket.connect(port: proxy.port)
        lazyReverse.setReceiveBufferSize(4096)
        #expect(await server.waitForAccepted(2, timeout: 5))

        async let blocked = lazyForward.writeAsMuchAsPossibleAsync(for: 2)
        let payload = pattern(count: 2 * megabyte, seed: 5)
        let started = now()
        let result = try await Self.runChain(length: 20, proxyPort: proxy.port, payload: payload)
        let elapsed = now() - started
        #expect(result.end == .eof)
        #expect(firstDifference(result.bytes, payload) == nil)
        #expect(elapsed < 8, "bulk took \(elapsed) s beside the blocked bridges")
        let written = await blocked
        #expect(written.end == nil, "the blocked client's bridge stays up while it is not stalled long: \(written)")
    }

    @Test(
        "One-way shutdown: after the client's SHUT_WR the server's one byte still arrives",
        .serialized,
        arguments: DataPath.allCases
    )
    func oneWayShutdown(path: DataPath) async throws {
        let server = try TestServer(handler: TestServer.waitForEOFThenWrite(0x21))
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, path.arguments)
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        client.shutdownWrite()
        let result = try await onThread { try client.readToEnd(timeout: 5) }
        #expect(result.bytes == [0x21])
        #expect(result.end == .eof)
        let closed = await proxy.waitForLine(containing: "bridge closed", timeout: 5)
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "completed")
    }

    @Test(
        "Early close: the server closes at once; a client writing every second is closed by the proxy",
        .serialized,
        arguments: DataPath.allCases
    )
    func earlyClose(path: DataPath) async throws {
        let server = try TestServer(handler: TestServer.closeImmediately)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, path.arguments)
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        let started = now()
        var writeFailed = false
        for _ in 0..<7 {
            if case .failure = client.trySend(bytes("abc")) { writeFailed = true }
            if writeFailed || !proxy.closedLines.isEmpty { break }
            await delay(seconds: 1)
        }
        let closed = await proxy.waitForLine(containing: "bridge closed", timeout: 1)
        #expect(closed != nil, "the proxy closed the bridge within \(now() - started) s")
        let end = await client.waitForEnd(timeout: 2)
        #expect(end.end.isClosed, "client sees the connection end: \(end.end)")
        print("early close: closed after \(now() - started) s: \(closed ?? "-")")
    }

    @Test(
        "Non-timeout of active client: writes with pauses longer than the stall timeout keep the bridge open",
        .serialized,
        arguments: DataPath.allCases
    )
    func activeClientIsNotTimedOut(path: DataPath) async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--stall-timeout", "1"] + path.arguments)
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        for round in 0..<4 {
            let message = bytes(String(format: "a%03d", round))
            try client.send(message)
            #expect(try client.recvExactly(4, timeout: 5) == message)
            if round < 3 { await delay(seconds: 1.5) }
        }
        #expect(client.peekEnd() == nil, "the connection is still open")
        #expect(proxy.closedLines.isEmpty, "no bridge closed: \(proxy.closedLines)")
    }

    @Test(
        "Timeout of lazy forward client: the server never reads; closed after the stall timeout (2 s)",
        .serialized,
        arguments: DataPath.allCases
    )
    func lazyForwardClientTimesOut(path: DataPath) async throws {
        let server = try TestServer(handler: TestServer.sinkNeverReads)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--stall-timeout", "2"] + path.arguments)
        defer { proxy.kill() }
        try await Self.expectStallTimeout(proxy: proxy, direction: .forward, within: 1.5...6)
    }

    @Test(
        "Timeout of lazy reverse client: the client never reads; closed after the stall timeout (2 s)",
        .serialized,
        arguments: DataPath.allCases
    )
    func lazyReverseClientTimesOut(path: DataPath) async throws {
        let server = try TestServer(handler: TestServer.writeForever)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--stall-timeout", "2"] + path.arguments)
        defer { proxy.kill() }
        try await Self.expectStallTimeout(proxy: proxy, direction: .reverse, within: 1.5...6)
    }

    @Test(
        "Timeout of lazy forward client with the default stall timeout (10 s)",
        .serialized,
        arguments: DataPath.allCases
    )
    func lazyForwardClientTimesOutByDefault(path: DataPath) async throws {
        let server = try TestServer(handler: TestServer.sinkNeverReads)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, path.arguments)
        defer { proxy.kill() }
        try await Self.expectStallTimeout(proxy: proxy, direction: .forward, within: 9...16)
    }

    // MARK: Helpers

    enum LazyDirection { case forward, reverse }

    /// Opens a bridge that stalls in `direction` and expects it closed with `stallTimeout` within `bounds` seconds.
    static func expectStallTimeout(proxy: ProxyProcess, direction: LazyDirection, within bounds: ClosedRange<Double>) async throws {
        let client = try TestSocket.connect(port: proxy.port)
        let started = now()
        let limit = bounds.upperBound + 2
        async let writer: (written: Int, end: StreamEnd?) =
            direction == .forward ? client.writeAsMuchAsPossibleAsync(for: limit) : (0, nil)
        if direction == .reverse { client.setReceiveBufferSize(4096) }
        let closed = await proxy.waitForLine(containing: "bridge closed", timeout: limit)
        let elapsed = now() - started
        let line = try #require(closed, "no bridge closed within \(limit) s")
        print("stall timeout (\(direction)): closed after \(elapsed) s: \(line)")
        #expect(logValue("close.reason", in: line) == "stallTimeout", "\(line)")
        #expect(bounds.contains(elapsed), "closed after \(elapsed) s, expected \(bounds)")
        let end = await client.waitForEnd(timeout: 3)
        #expect(end.end.isClosed, "the client sees its connection end: \(end.end)")
        if direction == .forward {
            let written = await writer
            #expect(written.end != nil, "the client's writes fail once the bridge is aborted")
        } else {
            _ = await writer
        }
    }

    /// A chain of `length` bridges to an echo server: `payload` goes into connection 0, what comes
    /// back on connection i is written to connection i+1, and EOF follows the data down the chain.
    /// Returns what comes out of the last connection.
    static func runChain(length: Int, proxyPort: Int, payload: [UInt8]) async throws -> (bytes: [UInt8], end: StreamEnd) {
        let chain = try (0..<length).map { _ in try TestSocket.connect(port: proxyPort) }
        return try await withThrowingTaskGroup(of: (bytes: [UInt8], end: StreamEnd)?.self) { group in
            group.addTask {
                try await onThread {
                    var offset = 0
                    while offset < payload.count {
                        let end = min(payload.count, offset + 65536)
                        try chain[0].send(Array(payload[offset..<end]), timeout: 30)
                        offset = end
                    }
                    chain[0].shutdownWrite()
                    return nil
                }
            }
            for index in 0..<(length - 1) {
                group.addTask {
                    try await onThread {
                        let end = try pump(from: chain[index], to: chain[index + 1], timeout: 30)
                        if end != .eof { throw SocketError.ended("pump \(index)", end) }
                        return nil
                    }
                }
            }
            group.addTask {
                try await onThread { try chain[length - 1].readToEnd(timeout: 30, limit: payload.count + 1) }
            }
            var output: (bytes: [UInt8], end: StreamEnd)?
            for try await result in group where result != nil { output = result }
            return output!
        }
    }
}

/// Copies `from` to `to` until `from` ends; passes EOF on with SHUT_WR.
func pump(from: TestSocket, to: TestSocket, timeout: Double) throws -> StreamEnd {
    let deadline = now() + timeout
    while true {
        switch try from.recv(timeout: max(0, deadline - now())) {
        case .data(let chunk): try to.send(chunk, timeout: max(0.1, deadline - now()))
        case .end(let end):
            if end == .eof { to.shutdownWrite() }
            return end
        }
    }
}
