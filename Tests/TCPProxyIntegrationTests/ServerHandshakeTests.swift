import Foundation
import Testing

/// The ACK that ends the server's handshake: held back for the client's first bytes to carry (one segment
/// less for the server), and sent at once when there are none, so a server that speaks first is not kept
/// waiting (docs/BRIDGE.md). Every forward path.
@Suite("The server's handshake", .ownThread)
struct ServerHandshakeTests {
    @Test(
        "The client's first bytes complete the server's handshake: no bare ACK reaches the server (one segment less)",
        arguments: DataPath.allCases
    )
    func firstBytesCarryTheHandshakeACK(path: DataPath) async throws {
        let (server, filler) = try TestServer.withFullQueue()  // the proxy's SYN waits: the client's bytes come first
        defer { filler.close(); server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, path.arguments)
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        defer { client.close() }
        try client.send("hello")
        await delay(seconds: 0.2)
        // Room in the queue: the proxy's SYN, sent again about a second after the first, is answered.
        try server.accept(timeout: 5).close()  // the filler's own connection
        let upstream = try server.accept(timeout: 5)
        defer { upstream.close() }
        #expect(try upstream.recvExactly(5, timeout: 5) == bytes("hello"))
        // The SYN, then the bytes, which acknowledge the SYN-ACK: no segment of their own for that.
        #expect(upstream.segmentsReceived == 2, "segments the server received: \(upstream.segmentsReceived.map(String.init) ?? "?")")
        try upstream.send("world")
        #expect(try client.recvExactly(5, timeout: 5) == bytes("world"))
    }

    @Test(
        "A server that speaks first gets its connection at once: with no client bytes, the handshake's ACK is not held back",
        arguments: DataPath.allCases
    )
    func serverSpeaksFirst(path: DataPath) async throws {
        try await Self.expectBannerAtOnce(path.arguments)
    }

    @Test("The same through a pool of targets (NIO), whose connects hold the ACK too")
    func serverSpeaksFirstThroughPool() async throws {
        try await Self.expectBannerAtOnce(["--target", "SAME"])
    }

    @Test("The same with --proxy-protocol, whose header carries the ACK", arguments: [DataPath.direct, .nio])
    func serverSpeaksFirstAfterHeader(path: DataPath) async throws {
        try await Self.expectBannerAtOnce(path.arguments + ["--proxy-protocol", "v1"])
    }

    /// A server that sends a banner on accept, reached through a proxy with `arguments` (`SAME` standing for
    /// the server's address): the fastest of three clients must get the banner in under 0.1 s.
    static func expectBannerAtOnce(_ arguments: [String]) async throws {
        // It reads what comes until the client leaves, as a real one would (a PROXY header left unread would
        // make its close a reset).
        let server = try TestServer(handler: { socket, _, _ in
            try? socket.send(bytes("220 ready\r\n"), timeout: 5)
            _ = try? socket.readToEnd(timeout: 5)
        })
        defer { server.stop() }
        let extra = arguments.map { $0 == "SAME" ? "127.0.0.1:\(server.port)" : $0 }
        let proxy = try await ProxyProcess.forward(to: server.port, extra)
        defer { proxy.kill() }

        // A held ACK would leave the server's accept waiting for the delayed-ACK timer (200 ms) every time.
        var fastest = Double.infinity
        for _ in 1...3 {
            let started = now()
            let client = try TestSocket.connect(port: proxy.port)
            defer { client.close() }
            #expect(try client.recvExactly(11, timeout: 5) == bytes("220 ready\r\n"))
            fastest = min(fastest, now() - started)
        }
        #expect(fastest < 0.1, "the banner took at least \(fastest) s")
    }
}
