import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Running a mux and a demux: metrics, limits, `--log-data`, refused options and SIGTERM.
@Suite("Mux and demux operations", .serialized, .ownThread)
struct MuxOperationsTests {
    typealias Tunnel = MuxTests.Tunnel

    @Test("--metrics on a mux and a demux: tunnels, connects, streams and bridges; a dropped tunnel is counted")
    func metrics() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let tunnel = try await Tunnel.start(
            to: server.port,
            demuxExtra: ["--metrics", "127.0.0.1:0"],
            muxExtra: ["--metrics", "127.0.0.1:0"]
        )
        defer { tunnel.kill() }

        let size = 50_000
        for seed in 0..<3 {
            try await onThread { try MuxTests.echoRoundTrip(port: tunnel.mux.port, size: size, seed: UInt64(seed)) }
        }
        #expect(await tunnel.mux.waitForLines(containing: "bridge closed", count: 3, timeout: 5) != nil)
        #expect(await tunnel.demux.waitForLines(containing: "bridge closed", count: 3, timeout: 5) != nil)

        for (proxy, listener) in [(tunnel.mux, "mux"), (tunnel.demux, "demux")] {
            let text = try await PrometheusText.scrape(proxy)
            func value(_ name: String, _ label: String? = nil) -> Double? { PrometheusText.value(text, name, label) }
            #expect(text.contains("listener=\"\(listener)\""), "\(text)")
            #expect(value("tcpproxy_tunnels_active") == 1, "\(listener): \(text)")
            #expect(value("tcpproxy_tunnel_connects_total") == 1, "\(listener)")
            #expect(value("tcpproxy_tunnel_connect_failures_total") == 0, "\(listener)")
            #expect(value("tcpproxy_streams_opened_total") == 3, "\(listener)")
            #expect(value("tcpproxy_streams_active") == 0, "\(listener)")
            #expect(value("tcpproxy_connections_accepted_total") == 3, "\(listener)")
            #expect(value("tcpproxy_bridges_active") == 0, "\(listener)")
            #expect(value("tcpproxy_bridges_closed_total", "reason=\"completed\"") == 3, "\(listener)")
            #expect(value("tcpproxy_bytes_total", "direction=\"upstream\"") == Double(3 * size), "\(listener)")
            #expect(value("tcpproxy_bytes_total", "direction=\"downstream\"") == Double(3 * size), "\(listener)")
            #expect(value("tcpproxy_stream_resets_sent_total", "code=\"connectionReset\"") == 0, "\(listener)")
        }

        // The demux goes away: the mux counts the drop and its failed reconnects.
        tunnel.demux.kill()
        #expect(await tunnel.mux.waitForLine(containing: "tunnel connect failed", timeout: 5) != nil)
        let text = try await PrometheusText.scrape(tunnel.mux)
        #expect(PrometheusText.value(text, "tcpproxy_tunnels_active") == 0, "\(text)")
        #expect(PrometheusText.value(text, "tcpproxy_tunnels_closed_total", "reason=\"connectionLost\"") == 1)
        #expect(PrometheusText.value(text, "tcpproxy_tunnels_closed_total", "reason=\"shutdown\"") == 0)
        #expect((PrometheusText.value(text, "tcpproxy_tunnel_connect_failures_total") ?? 0) >= 1)
        let down = tunnel.mux.lines(containing: "tunnel down").first
        #expect(down.flatMap { logValue("reason", in: $0) } == "connectionLost", "\(down ?? "no tunnel down line")")
    }

    @Test("demux --max-connections 2: a third stream is refused (its client closed, counted), a slot frees up again")
    func demuxMaxConnections() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let tunnel = try await Tunnel.start(to: server.port, demuxExtra: ["--max-connections", "2", "--metrics", "127.0.0.1:0"])
        defer { tunnel.kill() }

        let first = try TestSocket.connect(port: tunnel.mux.port)
        defer { first.close() }
        let second = try TestSocket.connect(port: tunnel.mux.port)
        defer { second.close() }
        for client in [first, second] {
            try client.send("ping")
            #expect(try client.recvExactly(4, timeout: 5) == bytes("ping"))
        }

        // With the mux stopped, the third client's 40 KB are in its socket before the mux accepts it: more
        // than the stream's initial credit, so some are still unread when the refusal comes.
        #expect(await tunnel.mux.pause(), "the mux stopped")
        let third = try TestSocket.connect(port: tunnel.mux.port)
        defer { third.close() }
        try third.send(pattern(count: 40_000, seed: 9))
        tunnel.mux.resume()
        let end = await third.waitForEnd(timeout: 5)
        // A FIN: what it sent is dropped unread, not left for close(2) to answer with a reset.
        #expect(end.end == .eof && end.count == 0, "the third client is closed with a FIN, nothing relayed: \(end)")
        let rejected = await tunnel.demux.waitForLine(containing: "connection rejected", timeout: 3)
        #expect(rejected.flatMap { logValue("close.reason", in: $0) } == "limitReached", "\(rejected ?? "no rejection line")")
        let closed = await tunnel.mux.waitForLine(containing: "bridge closed", timeout: 3)
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "connectFailed", "\(closed ?? "-")")
        #expect(closed.flatMap { logValue("bytes.upstream", in: $0) } == "40000", "read or dropped, all counted: \(closed ?? "-")")
        #expect(server.acceptedCount == 2, "the refused stream never reached the server")
        #expect(tunnel.mux.lines(containing: "tunnel down").isEmpty, "the tunnel stays up")

        let text = try await PrometheusText.scrape(tunnel.demux)
        #expect(PrometheusText.value(text, "tcpproxy_connections_rejected_total", "reason=\"limitReached\"") == 1, "\(text)")
        #expect(PrometheusText.value(text, "tcpproxy_stream_resets_sent_total", "code=\"refusedStream\"") == 1)

        first.close()
        #expect(await tunnel.demux.waitForLine(containing: "bridge closed", timeout: 5) != nil)
        let fourth = try TestSocket.connect(port: tunnel.mux.port)
        defer { fourth.close() }
        try fourth.send("pong")
        #expect(try fourth.recvExactly(4, timeout: 5) == bytes("pong"), "a stream is admitted again once one has left")
        try second.send("more")
        #expect(try second.recvExactly(4, timeout: 5) == bytes("more"))
    }

    @Test("--log-data on the mux logs each chunk with its direction")
    func logData() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let tunnel = try await Tunnel.start(to: server.port, muxExtra: ["--log-data"])
        defer { tunnel.kill() }
        let client = try TestSocket.connect(port: tunnel.mux.port)
        defer { client.close() }
        try client.send("LOGDATA")
        #expect(try client.recvExactly(7, timeout: 5) == bytes("LOGDATA"))
        let up = await tunnel.mux.waitForLine(containing: "direction=upstream", timeout: 3)
        let down = await tunnel.mux.waitForLine(containing: "direction=downstream", timeout: 3)
        for line in [up, down] {
            #expect(line?.contains(" data ") == true && line?.contains("bytes=7") == true, "\(line ?? "no data line")")
            #expect(line?.contains("4c 4f 47 44 41 54 41") == true, "the hex dump: \(line ?? "-")")
        }
    }

    @Test("per-chunk options are refused in mux and demux with one line that says why, exit 64")
    func refusedOptions() async throws {
        for (mode, option) in [
            ("mux", ["--capture", "/tmp/x.pcap"]), ("demux", ["--upstream-rate", "1M"]), ("mux", ["--latency", "10"]),
            ("demux", ["--corrupt", "0.5"]), ("demux", ["--proxy-protocol", "v1"]),
        ] {
            let base = mode == "mux" ? ["mux", "--tunnel", "127.0.0.1:1"] : ["demux", "--target", "127.0.0.1:1"]
            let result = try await ProxyProcess.runToExit(base + ["--listen", "127.0.0.1:0"] + option)
            #expect(result.status == 64, "\(option): \(result.stderr)")
            let line = result.stderr.split(separator: "\n").first { $0.hasPrefix("Error:") }
            #expect(line?.contains("\(option[0]) is not supported in mux and demux modes (") == true, "\(result.stderr)")
        }
    }

    @Test("SIGTERM on the mux: open streams are served to their end, new clients are not; exit 0, loops shut down")
    func muxDrains() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let tunnel = try await Tunnel.start(to: server.port)
        defer { tunnel.kill() }

        let client = try TestSocket.connect(port: tunnel.mux.port)
        defer { client.close() }
        try client.send("one")
        #expect(try client.recvExactly(3, timeout: 5) == bytes("one"))
        tunnel.mux.terminate()
        #expect(await tunnel.mux.waitForLine(containing: "shutting down", timeout: 3) != nil)
        await delay(seconds: 0.2)

        try client.send("two")
        #expect(try client.recvExactly(3, timeout: 5) == bytes("two"), "the open stream is still served")
        #expect(tunnel.mux.isRunning)
        if let late = try? TestSocket.connect(port: tunnel.mux.port, timeout: 2) {
            _ = late.trySend(bytes("late"))
            let end = await late.waitForEnd(timeout: 3)
            #expect(end.end.isClosed && end.count == 0, "a new client after SIGTERM is not served: \(end)")
            late.close()
        }
        #expect(server.acceptedCount == 1)

        client.shutdownWrite()
        let rest = try await onThread { try client.readToEnd(timeout: 5) }
        #expect(rest.end == .eof)
        let status = await tunnel.mux.waitForExit(timeout: 5)
        #expect(status == 0, "exit status \(String(describing: status)); stderr:\n\(tunnel.mux.stderr)")
        #expect(tunnel.mux.lines(containing: "listener stopped").count == 1)
        let closed = tunnel.mux.closedLines
        #expect(closed.count == 1 && closed.first.flatMap { logValue("close.reason", in: $0) } == "completed", "\(closed)")
        // The mux's own event loops were shut down cleanly: NIO complains about nothing on the way out.
        #expect(tunnel.mux.lines(containing: "EventLoop").isEmpty, "\(tunnel.mux.stderr)")
        // The demux saw an orderly GOAWAY, not a drop.
        let tunnelClosed = await tunnel.demux.waitForLine(containing: "tunnel closed", timeout: 3)
        #expect(tunnelClosed.flatMap { logValue("reason", in: $0) } == "shutdown", "\(tunnelClosed ?? "-")")
    }

    @Test("SIGTERM on the mux with --drain-timeout 1 and a stream that stays open: drainTimeout, exit 0 within 1-4 s")
    func muxDrainTimeout() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let tunnel = try await Tunnel.start(to: server.port, muxExtra: ["--drain-timeout", "1"])
        defer { tunnel.kill() }
        let client = try TestSocket.connect(port: tunnel.mux.port)
        defer { client.close() }
        try client.send("hold")
        #expect(try client.recvExactly(4, timeout: 5) == bytes("hold"))
        let started = now()
        tunnel.mux.terminate()
        let status = await tunnel.mux.waitForExit(timeout: 6)
        let elapsed = now() - started
        #expect(status == 0, "exit status \(String(describing: status)); stderr:\n\(tunnel.mux.stderr)")
        #expect((0.8...4).contains(elapsed), "exited after \(elapsed) s")
        let end = await client.waitForEnd(timeout: 2)
        #expect(end.end == .eof, "the quiet client's connection was closed with a FIN: \(end.end)")
        let closed = tunnel.mux.closedLines
        #expect(closed.first.flatMap { logValue("close.reason", in: $0) } == "drainTimeout", "\(closed)")
    }

    @Test("SIGTERM on the mux with --drain-timeout 1 cutting a download short: the client gets a reset, not an EOF")
    func muxDrainTimeoutCutsDownload() async throws {
        let server = try TestServer(handler: TestServer.writeForever)
        defer { server.stop() }
        let tunnel = try await Tunnel.start(to: server.port, muxExtra: ["--drain-timeout", "1"])
        defer { tunnel.kill() }
        let client = try TestSocket.connect(port: tunnel.mux.port)
        defer { client.close() }
        #expect(await server.waitForAccepted(1, timeout: 5))
        await delay(seconds: 0.5)
        tunnel.mux.terminate()
        #expect(await tunnel.mux.waitForExit(timeout: 6) == 0)
        let received = try await onThread { try client.drainToEnd(timeout: 10) }
        #expect(received.count > 0)
        #expect(received.end == .reset, "the cut shows as a reset after \(received.count) bytes, got \(received.end)")
    }

    @Test("demux --idle-timeout 1: an upload the kernel still sends to a slow server is traffic; the answer comes back")
    func demuxIdleCountsDrainingSendQueue() async throws {
        let upload = SlowAnsweredUpload()
        let server = try upload.server()
        defer { server.stop() }
        let tunnel = try await Tunnel.start(to: server.port, demuxExtra: ["--idle-timeout", "1", "--stall-timeout", "0"])
        defer { tunnel.kill() }
        try await upload.run(through: tunnel.mux.port)
        let closed = await tunnel.demux.waitForLine(containing: "bridge closed", timeout: 3)
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "completed", "\(closed ?? "no close line")")
    }

    @Test("Clients that reset mid-download end their demux streams at once, also streams whose last bytes wait for credit")
    func resetsEndFinishingStreams() async throws {
        // Downloads of 3 to 6.5 MB (around what the mux side can buffer), each server closing once it has sent: a stream whose server is done and
        // whose rest waits for credit when its client resets must end then, not at the drain timeout.
        let sizes = (0..<24).map { 3_000_000 + $0 * 150_000 }
        let payload = pattern(count: sizes.last!, seed: 73)
        let sent = Shared<Int>(0)
        let server = try TestServer { socket, index, _ in
            if (try? socket.send(Array(payload[0..<sizes[index % sizes.count]]), timeout: 30)) != nil {
                sent.update { $0 += 1 }
            }
        }
        defer { server.stop() }
        let tunnel = try await Tunnel.start(
            to: server.port,
            demuxExtra: ["--stall-timeout", "0", "--metrics", "127.0.0.1:0"],
            muxExtra: ["--stall-timeout", "0"]
        )
        defer { tunnel.kill() }
        // One at a time, so that the server's accept order matches `sizes`.
        var clients: [TestSocket] = []
        for _ in sizes {
            let client = try TestSocket.connect(port: tunnel.mux.port)
            client.shutdownWrite()
            #expect(await server.waitForAccepted(clients.count + 1, timeout: 5))
            _ = try client.recvExactly(65536, timeout: 5)
            clients.append(client)
        }
        await delay(seconds: 0.5)
        // Servers done but streams not: those are finishing (the path under test), or it was not reached.
        let finishing = sent.value - tunnel.demux.closedLines.count
        #expect(finishing > 0, "\(sent.value) servers done, \(tunnel.demux.closedLines.count) streams closed")
        for client in clients { client.resetClose() }
        let resetAt = now()
        var active: Double? = nil
        while now() - resetAt < 3 {
            await delay(seconds: 0.25)
            let text = try await PrometheusText.scrape(tunnel.demux)
            active = PrometheusText.value(text, "tcpproxy_streams_active")
            if active == 0 { break }
        }
        #expect(active == 0, "demux streams still open 3 s after their clients reset: \(active.map { "\($0)" } ?? "?")")
        let reasons = tunnel.demux.closedLines.compactMap { logValue("close.reason", in: $0) }
        #expect(!reasons.contains("stallTimeout") && !reasons.contains("drainTimeout"), "\(reasons)")
    }

    @Test("demux --stall-timeout 0 --drain-timeout 0: a download whose server closed at once arrives whole (the finish waits for credit)")
    func finishWithoutStallTimeout() async throws {
        let size = 8 * megabyte
        let server = try TestServer(handler: TestServer.sendThenClose(pattern(count: size, seed: 74)))
        defer { server.stop() }
        let tunnel = try await Tunnel.start(to: server.port, demuxExtra: ["--stall-timeout", "0", "--drain-timeout", "0"])
        defer { tunnel.kill() }
        let client = try TestSocket.connect(port: tunnel.mux.port)
        defer { client.close() }
        client.shutdownWrite()
        let received = try await onThread { try client.drainToEnd(timeout: 30) }
        #expect(received.count == size && received.end == .eof, "got \(received.count) of \(size) bytes, then \(received.end)")
        let closed = await tunnel.demux.waitForLine(containing: "bridge closed", timeout: 3)
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "completed", "\(closed ?? "no close line")")
    }

    @Test(
        "SIGTERM with --stall-timeout 0: streams whose local socket is gone but whose last bytes wait for credit end at the drain timeout",
        arguments: ["mux", "demux"]
    )
    func drainEndsFinishingStreams(draining: String) async throws {
        // Transfers of 3 to 6.5 MB with a FIN whose receiver reads nothing and has sent its own FIN: some fit into
        // the buffers on the way but for the sending end's last read, so that end has both EOFs, has closed its
        // local socket, and has bytes still waiting for credit. Uploads for the mux, downloads for the demux.
        let sizes = (0..<12).map { 3_000_000 + $0 * 300_000 }
        let upload = draining == "mux"
        let server = try TestServer { socket, index, server in
            if upload {
                socket.shutdownWrite()
                server.hold(socket)
            } else {
                try? socket.send(pattern(count: sizes[index % sizes.count], seed: 75), timeout: 4)
            }
        }
        defer { server.stop() }
        let drainOptions = ["--stall-timeout", "0", "--drain-timeout", "1"]
        let tunnel = try await Tunnel.start(
            to: server.port,
            demuxExtra: upload ? ["--stall-timeout", "0"] : drainOptions,
            muxExtra: upload ? drainOptions : ["--stall-timeout", "0"]
        )
        defer { tunnel.kill() }
        var clients: [TestSocket] = []
        for size in sizes {
            let client = try TestSocket.connect(port: tunnel.mux.port)
            clients.append(client)
            if upload {
                Thread {
                    // An upload that does not fit stays blocked until the timeout; only whole ones get their FIN.
                    if (try? client.send(pattern(count: size, seed: 75), timeout: 4)) != nil { client.shutdownWrite() }
                }.start()
            } else {
                client.shutdownWrite()
                // One at a time, so that the server's accept order matches `sizes`.
                #expect(await server.waitForAccepted(clients.count, timeout: 5))
            }
        }
        defer { for client in clients { client.close() } }
        await delay(seconds: 1.5)
        let end = upload ? tunnel.mux : tunnel.demux
        let started = now()
        end.terminate()
        #expect(await end.waitForExit(timeout: 10) == 0)
        #expect(now() - started < 3, "the \(draining) exited \(now() - started) s after SIGTERM with --drain-timeout 1")
        let reasons = end.closedLines.compactMap { logValue("close.reason", in: $0) }
        #expect(!reasons.contains("stallTimeout") && reasons.contains("drainTimeout"), "\(reasons)")
    }

    @Test("A client that resets before the mux could write it everything is a clientReset, not completed, even after both EOFs")
    func resetWithBytesHeldIsNotCompleted() async throws {
        // Downloads of 3.9 to 4.6 MB that the server closes at once, to clients that send their FIN and read
        // nothing: for some, the server's EOF reaches the mux while bytes still wait for the client's socket
        // (it stays in CLOSE-WAIT: the mux has not shut it down); for others the FIN is queued (LAST-ACK).
        let sizes = (0..<14).map { 3_900_000 + $0 * 50_000 }
        let payload = pattern(count: sizes.last!, seed: 76)
        let server = try TestServer { socket, index, _ in
            try? socket.send(Array(payload[0..<sizes[index % sizes.count]]), timeout: 30)
        }
        defer { server.stop() }
        let tunnel = try await Tunnel.start(to: server.port, demuxExtra: ["--stall-timeout", "0"], muxExtra: ["--stall-timeout", "0"])
        defer { tunnel.kill() }
        var clients: [TestSocket] = []
        for _ in sizes {
            let client = try TestSocket.connect(port: tunnel.mux.port)
            client.setReceiveBufferSize(4096)
            client.shutdownWrite()
            clients.append(client)
            #expect(await server.waitForAccepted(clients.count, timeout: 5))
        }
        await delay(seconds: 1.5)
        let held = MuxTests.connections(toPort: tunnel.mux.port, state: "08")
        let finQueued = MuxTests.connections(toPort: tunnel.mux.port, state: "09")
        #expect(held > 0, "no client socket is held with bytes to write (\(finQueued) have their FIN queued)")
        for client in clients { client.resetClose() }
        var reasons: [String] = []
        for _ in 0..<40 where reasons.count < sizes.count {
            await delay(seconds: 0.1)
            reasons = tunnel.mux.closedLines.compactMap { logValue("close.reason", in: $0) }
        }
        #expect(reasons.count == sizes.count)
        #expect(reasons.filter { $0 == "clientReset" }.count >= held, "\(held) held, \(finQueued) FIN queued: \(reasons)")
    }

    @Test("A demux that exits after its side of a download completed: the mux still hands the client all it holds")
    func tunnelGoneAfterBothEOFs() async throws {
        // A probe download the client does not read shows how much the mux's client socket takes; the real one
        // is half a window (of 1 MiB) more, so the mux has it all, EOF included, with part of it still unwritten,
        // while the demux's stream has completed and the demux, with no stream left, exits at SIGTERM at once.
        let size = Shared<Int>(8 * megabyte)
        let payload = pattern(count: 8 * megabyte, seed: 77)
        let server = try TestServer { socket, _, _ in try? socket.send(Array(payload[0..<size.value]), timeout: 30) }
        defer { server.stop() }
        let tunnel = try await Tunnel.start(to: server.port, muxExtra: ["--window", "1M"])
        defer { tunnel.kill() }
        let probe = try TestSocket.connect(port: tunnel.mux.port)
        probe.shutdownWrite()
        await delay(seconds: 1)
        let socketTakes = MuxTests.sendQueues(toPort: tunnel.mux.port, state: "08").max() ?? 0
        #expect(socketTakes > 0)
        probe.resetClose()
        #expect(await tunnel.demux.waitForLine(containing: "bridge closed", timeout: 5) != nil)
        size.update { $0 = socketTakes + 512 * 1024 }

        let client = try TestSocket.connect(port: tunnel.mux.port)
        defer { client.close() }
        client.shutdownWrite()
        var closed: [String] = []
        for _ in 0..<50 where closed.count < 2 {
            await delay(seconds: 0.1)
            closed = tunnel.demux.closedLines
        }
        #expect(closed.count == 2 && logValue("close.reason", in: closed[1]) == "completed", "\(closed)")
        tunnel.demux.terminate()
        #expect(await tunnel.demux.waitForExit(timeout: 3) == 0)
        let received = try await onThread { try client.readToEnd(timeout: 10) }
        let intact = sameBytes(received.bytes, Array(payload[0..<size.value]))
        #expect(received.end == .eof && intact, "got \(received.bytes.count) of \(size.value) bytes (intact: \(intact)), then \(received.end)")
        // The stream ends (and is logged) as the client's socket closes, just after the client saw EOF.
        let muxClosed = await tunnel.mux.waitForLines(containing: "bridge closed", count: 2, timeout: 5) ?? tunnel.mux.closedLines
        #expect(muxClosed.count == 2 && logValue("close.reason", in: muxClosed[1]) == "completed", "\(muxClosed)")
    }

    @Test("SIGTERM on the demux: GOAWAY, the open stream finishes, then the demux exits 0")
    func demuxDrains() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let tunnel = try await Tunnel.start(to: server.port)
        defer { tunnel.kill() }

        let client = try TestSocket.connect(port: tunnel.mux.port)
        defer { client.close() }
        try client.send("one")
        #expect(try client.recvExactly(3, timeout: 5) == bytes("one"))
        tunnel.demux.terminate()
        #expect(await tunnel.mux.waitForLine(containing: "tunnel peer going away", timeout: 3) != nil)
        try client.send("two")
        #expect(try client.recvExactly(3, timeout: 5) == bytes("two"), "the open stream is still served")
        #expect(tunnel.demux.isRunning)

        client.shutdownWrite()
        let rest = try await onThread { try client.readToEnd(timeout: 5) }
        #expect(rest.end == .eof)
        let status = await tunnel.demux.waitForExit(timeout: 5)
        #expect(status == 0, "exit status \(String(describing: status)); stderr:\n\(tunnel.demux.stderr)")
        let closed = tunnel.demux.closedLines
        #expect(closed.count == 1 && closed.first.flatMap { logValue("close.reason", in: $0) } == "completed", "\(closed)")
        let down = await tunnel.mux.waitForLine(containing: "tunnel down", timeout: 3)
        #expect(down.flatMap { logValue("reason", in: $0) } == "shutdown", "\(down ?? "-")")
        #expect(tunnel.mux.isRunning, "the mux stays up and reconnects")
    }
}
