import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// SPEC §3 mux / demux: two real processes, a demux in front of a test server and a mux pointing at it.
@Suite("Mux and demux", .serialized, .ownThread)
struct MuxTests {
    /// A demux in front of `server`, and a mux tunnelling to it.
    struct Tunnel {
        let demux: ProxyProcess
        let mux: ProxyProcess

        static func start(to serverPort: Int, demuxExtra: [String] = [], muxExtra: [String] = []) async throws -> Tunnel {
            let demux = try await ProxyProcess.start(
                ["demux", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:\(serverPort)"] + demuxExtra
            )
            do {
                let mux = try await ProxyProcess.start(
                    ["mux", "--listen", "127.0.0.1:0", "--tunnel", "127.0.0.1:\(demux.port)"] + muxExtra
                )
                guard await mux.waitForLine(containing: "tunnel up", timeout: 5) != nil else {
                    mux.kill()
                    throw SocketError.timeout("tunnel up")
                }
                return Tunnel(demux: demux, mux: mux)
            } catch {
                demux.kill()
                throw error
            }
        }

        func kill() {
            self.mux.kill()
            self.demux.kill()
        }
    }

    /// Established TCP connections whose local port is `port` (from /proc/net/tcp and tcp6): on loopback,
    /// the accepted ends of connections to a listener on `port`.
    static func establishedConnections(toPort port: Int) -> Int {
        self.connections(toPort: port, state: "01")
    }

    /// Connections whose local port is `port` in a TCP state (the hex code of /proc/net/tcp: `01`
    /// established, `08` close-wait, `09` last-ack).
    static func connections(toPort port: Int, state: String) -> Int {
        self.sendQueues(toPort: port, state: state).count
    }

    /// The send queues (bytes not yet acknowledged) of the connections whose local port is `port` in `state`.
    static func sendQueues(toPort port: Int, state: String) -> [Int] {
        var queues: [Int] = []
        for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
            // procfs files report size 0, so read them to the end rather than by their size.
            guard let handle = FileHandle(forReadingAtPath: file), let data = try? handle.readToEnd() else { continue }
            try? handle.close()
            let text = String(decoding: data, as: UTF8.self)
            for line in text.split(separator: "\n").dropFirst() {
                let fields = line.split(separator: " ", omittingEmptySubsequences: true)
                guard fields.count > 3, fields[3] == state else { continue }
                if let local = fields[1].split(separator: ":").last, Int(local, radix: 16) == port {
                    queues.append(fields[4].split(separator: ":").first.flatMap { Int($0, radix: 16) } ?? 0)
                }
            }
        }
        return queues
    }

    /// One echo round trip of `size` bytes on a new connection to `port`, then EOF both ways.
    static func echoRoundTrip(port: Int, size: Int, seed: UInt64) throws {
        let client = try TestSocket.connect(port: port)
        defer { client.close() }
        let data = pattern(count: size, seed: seed)
        let sender = Thread { try? client.send(data, timeout: 20); client.shutdownWrite() }
        sender.start()
        let received = try client.readToEnd(timeout: 20)
        guard received.end == .eof, sameBytes(received.bytes, data) else {
            throw SocketError.ended("echo \(seed): \(received.bytes.count) of \(size) bytes back", received.end)
        }
    }

    @Test("60 concurrent clients each get their own echo, over exactly one tunnel connection")
    func concurrentClientsOneConnection() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let tunnel = try await Tunnel.start(to: server.port)
        defer { tunnel.kill() }

        let clients = 60
        // Hold every client open until all are connected, so they are concurrent streams.
        let opened = try await withThrowingTaskGroup(of: TestSocket.self) { group in
            for index in 0..<clients {
                group.addTask {
                    try await onThread {
                        let socket = try TestSocket.connect(port: tunnel.mux.port)
                        try socket.send(bytes("hello \(index)"))
                        let expected = bytes("hello \(index)")
                        guard try socket.recvExactly(expected.count, timeout: 10) == expected else {
                            throw SocketError.ended("wrong echo for \(index)", .eof)
                        }
                        return socket
                    }
                }
            }
            var sockets: [TestSocket] = []
            for try await socket in group { sockets.append(socket) }
            return sockets
        }
        #expect(opened.count == clients)
        #expect(server.acceptedCount == clients, "the demux made one server connection per client")
        #expect(Self.establishedConnections(toPort: tunnel.demux.port) == 1, "one TCP connection between mux and demux")

        // Now bulk data on every stream at once, each with its own pattern, then EOF each way.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (index, socket) in opened.enumerated() {
                group.addTask {
                    try await onThread {
                        let data = pattern(count: 200_000, seed: UInt64(index))
                        let sender = Thread { try? socket.send(data, timeout: 30); socket.shutdownWrite() }
                        sender.start()
                        let received = try socket.readToEnd(timeout: 30)
                        guard received.end == .eof, sameBytes(received.bytes, data) else {
                            throw SocketError.ended("client \(index) got \(received.bytes.count) bytes", received.end)
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        for socket in opened { socket.close() }
        #expect(Self.establishedConnections(toPort: tunnel.demux.port) == 1)
        let closed = await tunnel.mux.waitForLines(containing: "bridge closed", count: clients, timeout: 10) ?? []
        #expect(closed.count == clients)
        #expect(closed.allSatisfy { logValue("close.reason", in: $0) == "completed" }, "\(closed.prefix(3))")
    }

    @Test(
        "The two ends may have different --window values: each announces its own, and 4 MiB echo both ways",
        arguments: [(["--window", "1M"], [String]()), (["--window", "16K"], ["--window", "1M"]), ([], ["--window", "16K"])]
    )
    func differentWindows(muxExtra: [String], demuxExtra: [String]) async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let tunnel = try await Tunnel.start(to: server.port, demuxExtra: demuxExtra, muxExtra: muxExtra)
        defer { tunnel.kill() }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for seed in 0..<3 {
                group.addTask { try await onThread { try Self.echoRoundTrip(port: tunnel.mux.port, size: 4 << 20, seed: UInt64(seed)) } }
            }
            try await group.waitForAll()
        }
        #expect(tunnel.demux.lines(containing: "tunnel protocol error").isEmpty, "\(tunnel.demux.stderr)")
        #expect(tunnel.mux.lines(containing: "tunnel protocol error").isEmpty, "\(tunnel.mux.stderr)")
        #expect(tunnel.mux.lines(containing: "tunnel down").isEmpty)
    }

    @Test("A client that stops reading does not slow another stream on the same tunnel")
    func stalledStreamDoesNotBlockOthers() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let tunnel = try await Tunnel.start(to: server.port, demuxExtra: ["--stall-timeout", "60"], muxExtra: ["--stall-timeout", "60"])
        defer { tunnel.kill() }
        let size = 16 * megabyte

        // Baseline: one echo stream alone.
        var started = now()
        try await onThread { try Self.echoRoundTrip(port: tunnel.mux.port, size: size, seed: 1) }
        let alone = now() - started

        // A client that writes and never reads: its echo fills its window, then everything behind it.
        let stalled = try TestSocket.connect(port: tunnel.mux.port)
        defer { stalled.close() }
        stalled.setReceiveBufferSize(4096)
        async let stalledWriter = stalled.writeAsMuchAsPossibleAsync(for: 2.5 + alone * 3)
        await delay(seconds: 1)

        started = now()
        try await onThread { try Self.echoRoundTrip(port: tunnel.mux.port, size: size, seed: 2) }
        let withStall = now() - started
        let written = await stalledWriter
        #expect(written.end == nil, "the stalled client's stream is not reset")
        // Kernel buffers on four loopback sockets take several MB; past them, the stalled stream takes nothing.
        let more = stalled.writeAsMuchAsPossible(for: 0.5)
        #expect(more.written == 0 && more.end == nil, "the stalled client is held back (wrote \(written.written), then \(more.written) bytes)")
        print("mux stall test: 16 MiB echo alone \(alone) s, beside a stalled stream \(withStall) s")
        // Flow control per stream: the other stream's throughput stays close to its speed alone.
        #expect(withStall < max(alone * 2, alone + 1), "alone \(alone) s, beside a stalled stream \(withStall) s")
        #expect(Self.establishedConnections(toPort: tunnel.demux.port) == 1)
    }

    @Test("EOF passes through each way: the other direction keeps flowing after a half-close")
    func endOfStreamEachWay() async throws {
        let server = try TestServer()
        defer { server.stop() }
        let tunnel = try await Tunnel.start(to: server.port)
        defer { tunnel.kill() }

        // Client half-closes first; the server answers after seeing EOF.
        let client = try TestSocket.connect(port: tunnel.mux.port)
        defer { client.close() }
        let request = pattern(count: 300_000, seed: 5)
        try client.send(request)
        client.shutdownWrite()
        let upstream = try await onThread { try server.accept(timeout: 5) }
        defer { upstream.close() }
        let got = try await onThread { try upstream.readToEnd(timeout: 10) }
        #expect(got.end == .eof, "the server sees the client's EOF")
        let gotSame = sameBytes(got.bytes, request)
        #expect(gotSame, "\(got.bytes.count) bytes, expected \(request.count)")
        let response = pattern(count: 500_000, seed: 6)
        try upstream.send(response, timeout: 10)
        upstream.shutdownWrite()
        let back = try await onThread { try client.readToEnd(timeout: 10) }
        #expect(back.end == .eof)
        let backSame = sameBytes(back.bytes, response)
        #expect(backSame, "\(back.bytes.count) bytes, expected \(response.count)")

        // Server half-closes first; the client keeps sending afterwards.
        let client2 = try TestSocket.connect(port: tunnel.mux.port)
        defer { client2.close() }
        let upstream2 = try await onThread { try server.accept(timeout: 5) }
        defer { upstream2.close() }
        try upstream2.send("banner")
        upstream2.shutdownWrite()
        let banner = try await onThread { try client2.readToEnd(timeout: 5) }
        #expect(banner.bytes == bytes("banner"))
        #expect(banner.end == .eof, "the client sees the server's EOF")
        let late = pattern(count: 200_000, seed: 7)
        try client2.send(late)
        client2.shutdownWrite()
        let lateGot = try await onThread { try upstream2.readToEnd(timeout: 10) }
        #expect(lateGot.end == .eof)
        let lateGotSame = sameBytes(lateGot.bytes, late)
        #expect(lateGotSame, "\(lateGot.bytes.count) bytes, expected \(late.count)")

        let closed = await tunnel.mux.waitForLines(containing: "bridge closed", count: 2, timeout: 5) ?? []
        #expect(closed.count == 2 && closed.allSatisfy { logValue("close.reason", in: $0) == "completed" }, "\(closed)")
    }

    @Test("A server reset resets the client; a client reset resets the server")
    func resetsPassThrough() async throws {
        let server = try TestServer()
        defer { server.stop() }
        let tunnel = try await Tunnel.start(to: server.port)
        defer { tunnel.kill() }

        let client = try TestSocket.connect(port: tunnel.mux.port)
        defer { client.close() }
        let upstream = try await onThread { try server.accept(timeout: 5) }
        try client.send("x")
        _ = try upstream.recvExactly(1, timeout: 5)
        upstream.resetClose()
        let end = try await onThread { try client.readToEnd(timeout: 5) }
        #expect(end.end == .reset, "the client sees a reset: \(end.end)")

        let client2 = try TestSocket.connect(port: tunnel.mux.port)
        try client2.send("y")
        let upstream2 = try await onThread { try server.accept(timeout: 5) }
        defer { upstream2.close() }
        _ = try upstream2.recvExactly(1, timeout: 5)
        client2.resetClose()
        let end2 = try await onThread { try upstream2.readToEnd(timeout: 5) }
        #expect(end2.end == .reset, "the server sees a reset: \(end2.end)")
    }

    @Test("Killing the demux resets live streams; after it restarts on the same port, new clients work again")
    func demuxRestart() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let tunnel = try await Tunnel.start(to: server.port)
        defer { tunnel.kill() }
        let demuxPort = tunnel.demux.port

        let live = try TestSocket.connect(port: tunnel.mux.port)
        defer { live.close() }
        try live.send("ping")
        #expect(try live.recvExactly(4, timeout: 5) == bytes("ping"))

        tunnel.demux.kill()
        let end = try await onThread { try live.readToEnd(timeout: 5) }
        #expect(end.end == .reset, "the live stream is reset when the tunnel drops: \(end.end)")
        #expect(await tunnel.mux.waitForLine(containing: "tunnel down", timeout: 5) != nil)
        let closed = await tunnel.mux.waitForLine(containing: "bridge closed", timeout: 5)
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "serverReset")

        let demux2 = try await ProxyProcess.start(
            ["demux", "--listen", "127.0.0.1:\(demuxPort)", "--target", "127.0.0.1:\(server.port)"]
        )
        defer { demux2.kill() }
        // The mux reconnects with backoff (at most 5 s between tries); a client arriving meanwhile waits.
        try await onThread { try Self.echoRoundTrip(port: tunnel.mux.port, size: 100_000, seed: 9) }
        #expect(await tunnel.mux.waitForLines(containing: "tunnel up", count: 2, timeout: 1) != nil)
        #expect(Self.establishedConnections(toPort: demuxPort) == 1)
        #expect(tunnel.mux.isRunning)
    }

    @Test("A client that arrives while no tunnel is up waits for it, or is closed after --connect-timeout")
    func clientWaitsForTunnel() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let demuxPort = try TestServer.freePort()
        let mux = try await ProxyProcess.start(
            ["mux", "--listen", "127.0.0.1:0", "--tunnel", "127.0.0.1:\(demuxPort)", "--connect-timeout", "1.5"]
        )
        defer { mux.kill() }

        let doomed = try TestSocket.connect(port: mux.port)
        defer { doomed.close() }
        try doomed.send("early")
        let started = now()
        let end = try await onThread { try doomed.readToEnd(timeout: 5) }
        let waited = now() - started
        #expect(end.end.isClosed && end.bytes.isEmpty, "\(end)")
        #expect(waited > 1.0 && waited < 3.5, "closed after \(waited) s")
        let closed = await mux.waitForLine(containing: "bridge closed", timeout: 2)
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "connectTimeout")

        // A client that sends before the tunnel is up has its data kept and delivered once it is (a second
        // mux with the default 10 s connect timeout, longer than the 5 s backoff cap).
        let patient = try await ProxyProcess.start(["mux", "--listen", "127.0.0.1:0", "--tunnel", "127.0.0.1:\(demuxPort)"])
        defer { patient.kill() }
        await delay(seconds: 0.5)
        let waiting = try TestSocket.connect(port: patient.port)
        defer { waiting.close() }
        try waiting.send("kept")
        let demux = try await ProxyProcess.start(
            ["demux", "--listen", "127.0.0.1:\(demuxPort)", "--target", "127.0.0.1:\(server.port)"]
        )
        defer { demux.kill() }
        #expect(try await onThread { try waiting.recvExactly(4, timeout: 8) } == bytes("kept"))
    }

    @Test("A tunnel peer that accepts but never answers (a frozen demux) is not a tunnel: no tunnel up, clients wait, a failed connect")
    func silentPeerIsNoTunnel() async throws {
        let silent = try TestServer(handler: TestServer.sinkNeverReads)
        defer { silent.stop() }
        let mux = try await ProxyProcess.start(
            ["mux", "--listen", "127.0.0.1:0", "--tunnel", "127.0.0.1:\(silent.port)", "--connect-timeout", "1"]
        )
        defer { mux.kill() }

        let client = try TestSocket.connect(port: mux.port)
        defer { client.close() }
        try client.send("early")
        let failed = await mux.waitForLine(containing: "tunnel connect failed", timeout: 4)
        #expect(failed.flatMap { logValue("error", in: $0) } == "no answer from the demux within 1 s", "\(failed ?? "-")")
        let end = await client.waitForEnd(timeout: 4)
        #expect(end.end == .eof && end.count == 0, "the waiting client is closed with a FIN after its connect timeout: \(end)")
        let closed = await mux.waitForLine(containing: "bridge closed", timeout: 2)
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "connectTimeout", "\(closed ?? "-")")
        #expect(mux.lines(containing: "tunnel up").isEmpty, "\(mux.stderr)")
    }

    @Test("A tunnel peer that accepts and closes (an ssh -L whose far end is down) is not a tunnel: a client waits and is served once a demux is there")
    func closingPeerIsNoTunnel() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let closer = try TestServer(handler: TestServer.closeImmediately)
        defer { closer.stop() }
        let tunnelPort = closer.port
        let mux = try await ProxyProcess.start(["mux", "--listen", "127.0.0.1:0", "--tunnel", "127.0.0.1:\(tunnelPort)"])
        defer { mux.kill() }
        #expect(await mux.waitForLine(containing: "tunnel connect failed", timeout: 5) != nil)

        let client = try TestSocket.connect(port: mux.port)
        defer { client.close() }
        try client.send("kept")
        await delay(seconds: 0.5)
        #expect(await closer.waitForAccepted(2, timeout: 5), "the mux kept trying")
        closer.stop()
        let deadline = now() + 5
        while Self.connections(toPort: tunnelPort, state: "0A") > 0 && now() < deadline { await delay(seconds: 0.02) }
        let demux = try await ProxyProcess.start(
            ["demux", "--listen", "127.0.0.1:\(tunnelPort)", "--target", "127.0.0.1:\(server.port)"]
        )
        defer { demux.kill() }
        #expect(try await onThread { try client.recvExactly(4, timeout: 8) } == bytes("kept"), "served, not reset")
        // Log lines are written in batches, a few milliseconds after the event.
        #expect(await mux.waitForLine(containing: "tunnel up", timeout: 2) != nil, "\(mux.stderr)")
        #expect(mux.lines(containing: "tunnel up").count == 1, "\(mux.stderr)")
        let failures = mux.lines(containing: "tunnel connect failed")
        #expect(
            failures.first.flatMap { logValue("error", in: $0) } == "closed before the demux answered (connectionLost)", "\(failures)"
        )
    }

    @Test("A demux that drains (GOAWAY: here a run file reloaded with a new target) keeps its streams; the mux opens a new tunnel at once for new clients")
    func newTunnelOnGoAway() async throws {
        let first = try TestServer(handler: TestServer.echo)
        defer { first.stop() }
        let second = try TestServer(handler: TestServer.echo)
        defer { second.stop() }
        let demuxPort = try TestServer.freePort()
        let file = try RunFileTests.ConfigFile()
        func demuxFile(target: Int) -> String {
            "listeners:\n  - {name: d, mode: demux, listen: \"127.0.0.1:\(demuxPort)\", target: \"127.0.0.1:\(target)\"}\n"
        }
        try file.write(demuxFile(target: first.port))
        let demux = try ProxyProcess(arguments: ["run", file.path])
        defer { demux.kill() }
        #expect(await demux.waitForLine(containing: "listening on", timeout: 15) != nil, "\(demux.stderr)")
        let mux = try await ProxyProcess.start(["mux", "--listen", "127.0.0.1:0", "--tunnel", "127.0.0.1:\(demuxPort)"])
        defer { mux.kill() }
        #expect(await mux.waitForLine(containing: "tunnel up", timeout: 5) != nil)

        let old = try TestSocket.connect(port: mux.port)
        defer { old.close() }
        #expect(try RunFileTests.echoes(old, "before"))
        try file.write(demuxFile(target: second.port))
        demux.signal(SIGHUP)
        #expect(await mux.waitForLines(containing: "tunnel up", count: 2, timeout: 5) != nil, "\(mux.stderr)")

        // Before, new clients waited for the old tunnel to close: here never, as its one stream stays open.
        let new = try TestSocket.connect(port: mux.port)
        defer { new.close() }
        let started = now()
        #expect(try RunFileTests.echoes(new, "after"))
        #expect(now() - started < 2, "served at once: \(now() - started) s")
        #expect(second.acceptedCount == 1, "the new client went to the new demux's target")
        #expect(try RunFileTests.echoes(old, "still"), "the open stream runs on over the draining tunnel")
        #expect(mux.lines(containing: "tunnel draining").count == 1, "\(mux.stderr)")
    }

    @Test("A peer that answers and at once sends GOAWAY, every time, gets the reconnect backoff, not a loop as fast as its round trip")
    func goAwayAtOnceBacksOff() async throws {
        // Answers the mux's first PING (11-byte header, 8-byte payload), then GOAWAY noError, then closes.
        let peer = try TestServer(handler: { socket, _, _ in
            guard let ping = try? socket.recvExactly(19, timeout: 5), ping[5] == 5 else { return }
            let pong: [UInt8] = [2, 0, 0, 0, 0, 6, 0, 0, 0, 0, 8] + ping[11...]
            let goAway: [UInt8] = [2, 0, 0, 0, 0, 7, 0, 0, 0, 0, 4, 0, 0, 0, 0]
            try? socket.send(pong + goAway)
            _ = try? socket.readToEnd(timeout: 1)
        })
        defer { peer.stop() }
        let mux = try await ProxyProcess.start(["mux", "--listen", "127.0.0.1:0", "--tunnel", "127.0.0.1:\(peer.port)"])
        defer { mux.kill() }
        #expect(await mux.waitForLine(containing: "tunnel draining", timeout: 5) != nil, "\(mux.stderr)")
        await delay(seconds: 2)
        // 100, 200, 400, 800 ms (±20%) and the connects between them: a handful in 2 s, not hundreds.
        #expect(peer.acceptedCount <= 8, "\(peer.acceptedCount) tunnel connections in about 2 s")
        #expect(mux.isRunning)
    }

    @Test("Protocol garbage sent to the demux is rejected with a close; the demux keeps serving a real mux")
    func garbageRejected() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let tunnel = try await Tunnel.start(to: server.port)
        defer { tunnel.kill() }
        let garbage: [[UInt8]] = [
            bytes("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            [2, 0, 0, 0, 1, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF],  // DATA far over the maximum size
            [2, 0, 0, 0, 7, 0, 0, 0, 0, 0, 1, 0x41],  // DATA on a stream never opened
            [2, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0],  // OPEN reusing an id
            // OPEN, EOF, then DATA on the same stream: bytes after its own EOF
            [2, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0x41],
            pattern(count: 4096, seed: 77),
        ]
        for bad in garbage {
            let raw = try TestSocket.connect(port: tunnel.demux.port)
            defer { raw.close() }
            try raw.send(bad)
            let end = try await onThread { try raw.readToEnd(timeout: 5) }
            #expect(end.end.isClosed, "the demux closes a tunnel that sends garbage: \(end.end)")
        }
        #expect(tunnel.demux.isRunning)
        #expect(await tunnel.demux.waitForLines(containing: "tunnel protocol error", count: garbage.count, timeout: 3) != nil)
        try await onThread { try Self.echoRoundTrip(port: tunnel.mux.port, size: 100_000, seed: 3) }
    }

    @Test("A stream whose server connection fails closes its client with connectFailed")
    func connectFailure() async throws {
        let tunnel = try await Tunnel.start(to: refusedPort)
        defer { tunnel.kill() }
        let client = try TestSocket.connect(port: tunnel.mux.port)
        defer { client.close() }
        let end = try await onThread { try client.readToEnd(timeout: 5) }
        #expect(end.end.isClosed)
        let closed = await tunnel.mux.waitForLine(containing: "bridge closed", timeout: 3)
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "connectFailed")
        #expect(tunnel.mux.lines(containing: "tunnel down").isEmpty, "the tunnel stays up")
    }

    @Test("A stream reset while the demux connects its server ends at once and frees its slot")
    func resetWhileConnecting() async throws {
        let (server, filler) = try TestServer.withFullQueue()  // connects to it get no answer
        defer { filler.close(); server.stop() }
        let tunnel = try await Tunnel.start(to: server.port, demuxExtra: ["--max-connections", "1"])
        defer { tunnel.kill() }

        let doomed = try TestSocket.connect(port: tunnel.mux.port)
        try doomed.send("doomed")
        #expect(await tunnel.demux.waitForLine(containing: "bridge accepted", timeout: 3) != nil)
        await delay(seconds: 0.2)
        try #require(tunnel.demux.lines(containing: "bridge connected").isEmpty, "test precondition: the connect is pending")
        doomed.resetClose()
        let started = now()
        let closed = await tunnel.demux.waitForLine(containing: "bridge closed", timeout: 3)
        #expect(closed != nil && now() - started < 1.5, "the RESET ends the stream without waiting for the connect")
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "clientReset", "\(closed ?? "no close line")")
        #expect(tunnel.demux.lines(containing: "bridge connect failed").isEmpty, "a cancelled connect is no failure")

        // The slot is free: the next stream is accepted (its connect pends as well) rather than refused.
        let next = try TestSocket.connect(port: tunnel.mux.port)
        defer { next.close() }
        try next.send("next")
        #expect(await tunnel.demux.waitForLines(containing: "bridge accepted", count: 2, timeout: 3) != nil, "\(tunnel.demux.stderr)")
        #expect(tunnel.demux.lines(containing: "connection rejected").isEmpty, "\(tunnel.demux.stderr)")
    }

    @Test("Usage errors exit 64")
    func usageErrors() async throws {
        for arguments in [
            ["mux", "--listen", "127.0.0.1:0"],
            ["mux", "--listen", "127.0.0.1:0", "--tunnel", "127.0.0.1:1", "--tunnels", "0"],
            ["demux", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:1", "--window", "1K"],
            ["demux", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:1", "--capture", "/tmp/x.pcap"],
        ] {
            let result = try await ProxyProcess.runToExit(arguments)
            #expect(result.status == 64, "\(arguments): \(result.stderr)")
        }
    }
}
