import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// SPEC §2.5-6: EOF passes through as SHUT_WR with the other direction still flowing; resets pass through.
@Suite("End of stream and resets", .ownThread)
struct EndOfStreamTests {
    /// A proxy in front of a manual server, with one bridged pair already accepted.
    struct Pair {
        let server: TestServer
        let proxy: ProxyProcess
        let client: TestSocket
        let upstream: TestSocket

        static func open(_ extra: [String] = []) async throws -> Pair {
            let server = try TestServer()
            let proxy: ProxyProcess
            do { proxy = try await ProxyProcess.forward(to: server.port, extra) } catch {
                server.stop()
                throw error
            }
            do {
                let client = try TestSocket.connect(port: proxy.port)
                let upstream = try await onThread { try server.accept(timeout: 5) }
                // The server's accept can come before the proxy sees its connect complete; a reset
                // in between would be a failed connect, not the reset these tests are about.
                _ = await proxy.waitForLine(containing: "bridge connected", timeout: 5)
                return Pair(server: server, proxy: proxy, client: client, upstream: upstream)
            } catch {
                proxy.kill()
                server.stop()
                throw error
            }
        }

        func close() {
            self.proxy.kill()
            self.client.close()
            self.upstream.close()
            self.server.stop()
        }
    }

    @Test(
        "Client half-close: after the client's EOF the server still sends 100 KB and the client gets all of it",
        .serialized,
        arguments: DataPath.allCases
    )
    func clientHalfClose(path: DataPath) async throws {
        let pair = try await Pair.open(path.arguments)
        defer { pair.close() }
        let response = pattern(count: 100_000, seed: 31)

        try pair.client.send("request")
        pair.client.shutdownWrite()
        let request = try await onThread { try pair.upstream.readToEnd(timeout: 5) }
        #expect(request.bytes == bytes("request"))
        #expect(request.end == .eof, "the server sees the client's EOF")

        try pair.upstream.send(response)
        pair.upstream.shutdownWrite()
        let received = try await onThread { try pair.client.readToEnd(timeout: 5) }
        #expect(received.end == .eof)
        #expect(sameBytes(received.bytes, response))

        let closed = try #require(await pair.proxy.waitForLine(containing: "bridge closed", timeout: 5))
        #expect(logValue("close.reason", in: closed) == "completed")
        #expect(logValue("bytes.upstream", in: closed) == "7")
        #expect(logValue("bytes.downstream", in: closed) == "100000")
    }

    @Test(
        "Server half-close: after the server's EOF the client still sends 64 KB and the server gets all of it",
        .serialized,
        arguments: DataPath.allCases
    )
    func serverHalfClose(path: DataPath) async throws {
        let pair = try await Pair.open(path.arguments)
        defer { pair.close() }
        let upload = pattern(count: 65536, seed: 32)

        try pair.upstream.send("hello")
        pair.upstream.shutdownWrite()
        let greeting = try await onThread { try pair.client.readToEnd(timeout: 5) }
        #expect(greeting.bytes == bytes("hello"))
        #expect(greeting.end == .eof, "the client sees the server's EOF")

        try pair.client.send(upload)
        pair.client.shutdownWrite()
        let received = try await onThread { try pair.upstream.readToEnd(timeout: 5) }
        #expect(received.end == .eof)
        #expect(sameBytes(received.bytes, upload))
        let closed = await pair.proxy.waitForLine(containing: "bridge closed", timeout: 5)
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "completed")
    }

    @Test(
        "Server EOF first, then the client sends 1 MB and EOF to a slowly reading server: all 1 MB arrives",
        .serialized,
        arguments: DataPath.allCases
    )
    func serverEOFThenClientBulkToSlowReader(path: DataPath) async throws {
        let pair = try await Pair.open(path.arguments)
        defer { pair.close() }
        let upload = pattern(count: megabyte, seed: 33)

        pair.upstream.shutdownWrite()
        let first = try pair.client.recv(timeout: 5)
        #expect(first == .end(.eof), "the client sees the server's EOF first")

        async let sent: Void = onThread {
            var offset = 0
            while offset < upload.count {
                try pair.client.send(Array(upload[offset..<min(upload.count, offset + 65536)]), timeout: 20)
                offset += 65536
            }
            pair.client.shutdownWrite()
        }
        let received = try await onThread { () -> (bytes: [UInt8], end: StreamEnd) in
            var received: [UInt8] = []
            let deadline = now() + 20
            while true {
                switch try pair.upstream.recv(max: 32 * 1024, timeout: max(0, deadline - now())) {
                case .data(let data):
                    received += data
                    usleep(5000)  // a slow reader: ~6 MB/s at most
                case .end(let end):
                    return (received, end)
                }
            }
        }
        try await sent
        #expect(received.end == .eof)
        #expect(received.bytes.count == upload.count)
        #expect(sameBytes(received.bytes, upload))
        let closed = await pair.proxy.waitForLine(containing: "bridge closed", timeout: 5)
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "completed", "\(closed ?? "no close line")")
    }

    @Test(
        "The server's last bytes and its FIN reach the client in one segment, as they left the server",
        .serialized,
        arguments: [DataPath.direct, .directSyscalls],
        [false, true]
    )
    func finRidesWithLastBytes(path: DataPath, clientEndedFirst: Bool) async throws {
        let pair = try await Pair.open(path.arguments)
        defer { pair.close() }
        try pair.client.send("request")
        #expect(try pair.upstream.recvExactly(7, timeout: 5) == bytes("request"))
        // With the client's EOF already passed on, the proxy closes both sockets instead of shutting one.
        if clientEndedFirst {
            pair.client.shutdownWrite()
            #expect(try await onThread { try pair.upstream.readToEnd(timeout: 5) }.end == .eof)
        }
        #expect(await pair.client.waitUntilAcknowledged(timeout: 5), "the proxy acknowledged what the client sent")
        let before = try #require(pair.client.segmentsReceived)

        // One segment carries the response and the FIN into the proxy: both are there at its first read.
        let response = pattern(count: 300, seed: 35)
        #expect(response.withUnsafeBytes { send(pair.upstream.fd, $0.baseAddress, $0.count, Int32(MSG_MORE)) } == 300)
        pair.upstream.shutdownWrite()
        let received = try await onThread { try pair.client.readToEnd(timeout: 5) }
        #expect(received.end == .eof)
        #expect(sameBytes(received.bytes, response))
        let after = try #require(pair.client.segmentsReceived)
        #expect(after - before == 1, "the FIN came in a segment of its own (\(after - before) segments)")
        if clientEndedFirst {
            let closed = await pair.proxy.waitForLine(containing: "bridge closed", timeout: 5)
            #expect(closed.flatMap { logValue("close.reason", in: $0) } == "completed", "\(closed ?? "no close line")")
        }
    }

    @Test(
        "Client reset (SO_LINGER 0): the server sees reset or EOF promptly and the log says clientReset",
        .serialized,
        arguments: DataPath.allCases
    )
    func clientReset(path: DataPath) async throws {
        let pair = try await Pair.open(path.arguments)
        defer { pair.close() }
        try pair.client.send("x")
        #expect(try pair.upstream.recvExactly(1, timeout: 5) == bytes("x"))

        let started = now()
        pair.client.resetClose()
        let end = try await onThread { try pair.upstream.readToEnd(timeout: 3) }
        #expect(end.end.isClosed, "server side ended with \(end.end)")
        #expect(now() - started < 2, "promptly: \(now() - started) s")
        let closed = await pair.proxy.waitForLine(containing: "bridge closed", timeout: 3)
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "clientReset", "\(closed ?? "no close line")")
    }

    @Test(
        "Server reset (SO_LINGER 0): the client sees a reset and the log says serverReset",
        .serialized,
        arguments: DataPath.allCases
    )
    func serverReset(path: DataPath) async throws {
        let pair = try await Pair.open(path.arguments)
        defer { pair.close() }
        try pair.upstream.send("y")
        #expect(try pair.client.recvExactly(1, timeout: 5) == bytes("y"))

        let started = now()
        pair.upstream.resetClose()
        let end = try await onThread { try pair.client.readToEnd(timeout: 3) }
        #expect(end.end == .reset, "client side ended with \(end.end), expected a reset")
        #expect(now() - started < 2, "promptly: \(now() - started) s")
        let closed = await pair.proxy.waitForLine(containing: "bridge closed", timeout: 3)
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "serverReset", "\(closed ?? "no close line")")
    }

    @Test(
        "Server's last bytes, then its reset: the client gets the bytes, then a reset",
        .serialized,
        arguments: DataPath.allCases
    )
    func lastBytesBeforeServerReset(path: DataPath) async throws {
        // The bytes and the reset usually reach the proxy before it wakes: it sees both in one event.
        for _ in 0..<4 {
            let pair = try await Pair.open(path.arguments)
            defer { pair.close() }
            try pair.upstream.send("last words")
            pair.upstream.resetClose()
            let end = try await onThread { try pair.client.readToEnd(timeout: 3) }
            #expect(end.bytes == bytes("last words"), "the bytes that came before the reset: \(end.bytes.count) of 10")
            #expect(end.end == .reset, "then a reset, got \(end.end)")
        }
    }

    @Test(
        "Server reset while the client is sending: the client's writes fail and the bridge closes",
        .serialized,
        arguments: DataPath.allCases
    )
    func serverResetWhileClientSends(path: DataPath) async throws {
        let pair = try await Pair.open(["--stall-timeout", "0"] + path.arguments)
        defer { pair.close() }
        pair.upstream.resetClose()
        let written = await pair.client.writeAsMuchAsPossibleAsync(for: 3)
        #expect(written.end != nil, "the client's writes fail after the server's reset (wrote \(written.written))")
        let closed = await pair.proxy.waitForLine(containing: "bridge closed", timeout: 3)
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "serverReset", "\(closed ?? "no close line")")
    }

}
