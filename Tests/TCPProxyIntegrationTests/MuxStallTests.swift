import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// SPEC §2 rule 7 through a tunnel: a stream is stalled only when a local peer takes nothing, judged at that
/// peer's socket by the end it is connected to; the other end, which waits for credit meanwhile, does not
/// time the wait out.
@Suite("Mux stall timeouts", .serialized, .ownThread)
struct MuxStallTests {
    typealias Tunnel = MuxTests.Tunnel

    /// Reads 64 KiB every 0.1 s (about 640 KB/s) for `seconds`: a slow reader that never stops.
    /// - Returns: the bytes read, and how the stream ended if it did.
    private static func readSlowly(_ socket: TestSocket, for seconds: Double) -> (count: Int, end: StreamEnd?) {
        var count = 0
        let started = now()
        while now() - started < seconds {
            guard let result = try? socket.recv(max: 65536, timeout: 5) else { return (count, .timeout) }
            switch result {
            case .data(let data): count += data.count
            case .end(let end): return (count, end)
            }
            usleep(100_000)
        }
        return (count, nil)
    }

    /// Sends 64 KiB chunks until the peer stops taking them for 10 s, it goes away, or `seconds` pass.
    private static func flood(_ socket: TestSocket, for seconds: Double) {
        let chunk = [UInt8](repeating: 0x5A, count: 65536)
        let started = now()
        while now() - started < seconds, (try? socket.send(chunk, timeout: 10)) != nil {}
    }

    @Test(
        "A slow reader that keeps reading is never stall-timed-out through the tunnel (--stall-timeout 1 at both ends, 4 s of it)",
        arguments: ["download", "upload"]
    )
    func slowReaderIsNotAStall(direction: String) async throws {
        let serverRead = Shared<(count: Int, end: StreamEnd?)>((0, nil))
        let server = try TestServer(receiveBufferSize: direction == "upload" ? 65536 : nil) { socket, _, _ in
            if direction == "download" {
                Self.flood(socket, for: 20)
            } else {
                let result = Self.readSlowly(socket, for: 4)
                serverRead.update { $0 = result }
            }
        }
        defer { server.stop() }
        let stall = ["--stall-timeout", "1"]
        let tunnel = try await Tunnel.start(to: server.port, demuxExtra: stall, muxExtra: stall)
        defer { tunnel.kill() }

        // The small receive buffer set before connecting keeps the reader's window small, so the proxy's
        // send buffer towards it fills (megabytes) and its writes complete only as the reader frees room.
        let client = try TestSocket.connect(port: tunnel.mux.port, receiveBufferSize: direction == "download" ? 65536 : nil)
        defer { client.close() }
        let read: (count: Int, end: StreamEnd?)
        if direction == "download" {
            read = try await onThread { Self.readSlowly(client, for: 4) }
        } else {
            try await onThread { Self.flood(client, for: 4.5) }
            read = serverRead.value
        }
        #expect(read.end == nil, "the stream ended while its reader kept reading: \(String(describing: read.end))")
        #expect(read.count > 1_500_000, "read \(read.count) bytes in 4 s")
        let reasons = (tunnel.mux.closedLines + tunnel.demux.closedLines).compactMap { logValue("close.reason", in: $0) }
        #expect(!reasons.contains("stallTimeout"), "\(reasons)")
    }

    @Test(
        "A local peer that takes nothing is stall-timed-out by its own end, which resets the stream at the other end too",
        arguments: ["download", "upload"]
    )
    func stalledReaderIsReset(direction: String) async throws {
        let server = try TestServer { socket, _, server in
            if direction == "download" {
                Self.flood(socket, for: 20)
            } else {
                TestServer.sinkNeverReads(socket, 0, server)
            }
        }
        defer { server.stop() }
        let options = ["--stall-timeout", "1", "--metrics", "127.0.0.1:0"]
        let tunnel = try await Tunnel.start(to: server.port, demuxExtra: options, muxExtra: options)
        defer { tunnel.kill() }
        let client = try TestSocket.connect(port: tunnel.mux.port)
        defer { client.close() }
        if direction == "upload" {
            // Until the reset the stall brings ends it (or 8 s).
            try await onThread { Self.flood(client, for: 8) }
        }
        // The end whose local peer stalls times it out; the other learns it from the RESET.
        let (stalledEnd, otherEnd) = direction == "download" ? (tunnel.mux, tunnel.demux) : (tunnel.demux, tunnel.mux)
        for proxy in [stalledEnd, otherEnd] {
            let closed = await proxy.waitForLine(containing: "bridge closed", timeout: 10)
            #expect(closed.flatMap { logValue("close.reason", in: $0) } == "stallTimeout", "\(closed ?? "no close line")")
        }
        let sent = try await PrometheusText.scrape(stalledEnd)
        #expect(PrometheusText.value(sent, "tcpproxy_stream_resets_sent_total", "code=\"stallTimeout\"") == 1, "\(sent)")
        let received = try await PrometheusText.scrape(otherEnd)
        #expect(PrometheusText.value(received, "tcpproxy_stream_resets_received_total", "code=\"stallTimeout\"") == 1, "\(received)")
    }

    @Test("Bytes held for a server the demux is still connecting to are not a stall: they arrive once it answers")
    func slowConnectIsNotAStall() async throws {
        // A backlog of 0 and one queued connection: the demux's SYNs are dropped until the filler is taken.
        let target = try TestServer(backlog: 0)
        defer { target.stop() }
        let filler = try TestSocket.connect(port: target.port)
        defer { filler.close() }
        let stall = ["--stall-timeout", "1"]
        let tunnel = try await Tunnel.start(to: target.port, demuxExtra: stall, muxExtra: stall)
        defer { tunnel.kill() }

        let client = try TestSocket.connect(port: tunnel.mux.port)
        defer { client.close() }
        // More than a window (256 KiB): the mux holds the rest, without credit, for as long as the connect takes.
        let payload = pattern(count: 600 * 1024, seed: 92)
        async let sent: Void = onThread {
            try client.send(payload, timeout: 20)
            client.shutdownWrite()
        }
        await delay(seconds: 2.5)
        // Answer from now on: the demux's SYN retransmitted 3 s after the first gets through.
        let answering = Thread {
            for _ in 0..<2 {
                guard let socket = try? target.accept(timeout: 10) else { return }
                Thread { TestServer.echo(socket, 0, target); socket.close() }.start()
            }
        }
        answering.start()
        try await sent
        let echoed = try await onThread { try client.readToEnd(timeout: 20) }
        #expect(echoed.end == .eof && sameBytes(echoed.bytes, payload), "got \(echoed.bytes.count) bytes, then \(echoed.end)")
        let closed = await tunnel.mux.waitForLine(containing: "bridge closed", timeout: 5)
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "completed", "\(closed ?? "no close line")")
    }
}
