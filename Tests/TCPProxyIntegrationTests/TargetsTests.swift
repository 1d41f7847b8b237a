import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Several targets, failover, health checks and the PROXY protocol on the real binary.
@Suite("Targets and PROXY protocol", .ownThread)
struct TargetsTests {
    /// A server that answers each connection with its own name, then closes.
    private func namedServer(_ name: String) throws -> TestServer {
        try TestServer(handler: TestServer.sendThenClose(Array(name.utf8)))
    }

    /// Connects `count` clients one after another and returns which server answered each.
    private func answers(_ proxy: ProxyProcess, count: Int) async throws -> [String] {
        try await onThread {
            try (0..<count).map { _ in
                let client = try TestSocket.connect(port: proxy.port)
                defer { client.close() }
                let reply = try client.readToEnd(timeout: 5)
                return String(decoding: reply.bytes, as: UTF8.self)
            }
        }
    }

    @Test("round-robin over three targets spreads clients evenly, and weights shift the shares")
    func roundRobin() async throws {
        let servers = try ["a", "b", "c"].map(self.namedServer)
        defer { servers.forEach { $0.stop() } }
        let even = try await ProxyProcess.start(
            ["forward", "--listen", "127.0.0.1:0"] + servers.flatMap { ["--target", "127.0.0.1:\($0.port)"] }
        )
        defer { even.kill() }
        let picks = try await self.answers(even, count: 30)
        #expect(["a", "b", "c"].map { name in picks.filter { $0 == name }.count } == [10, 10, 10])

        let weighted = try await ProxyProcess.start([
            "forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:\(servers[0].port),weight=3",
            "--target", "127.0.0.1:\(servers[1].port)", "--target", "127.0.0.1:\(servers[2].port),weight=2",
        ])
        defer { weighted.kill() }
        let shares = try await self.answers(weighted, count: 60)
        #expect(["a", "b", "c"].map { name in shares.filter { $0 == name }.count } == [30, 10, 20])
    }

    @Test(
        "--metrics counts each target's bytes (tcpproxy_target_bytes_total), copied or spliced",
        arguments: [["--splice", "never"], ["--splice", "always"]]
    )
    func targetBytes(splice: [String]) async throws {
        let servers = try (0..<2).map { _ in try TestServer(handler: TestServer.echo) }
        defer { servers.forEach { $0.stop() } }
        let proxy = try await ProxyProcess.start(
            ["forward", "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"] + splice
                + servers.flatMap { ["--target", "127.0.0.1:\($0.port)"] }
        )
        defer { proxy.kill() }
        // Round-robin: the first client goes to the first target, the second to the second.
        for size in [1000, 3000] {
            let client = try TestSocket.connect(port: proxy.port)
            defer { client.close() }
            let payload = pattern(count: size, seed: UInt64(size))
            try client.send(payload)
            #expect(try client.recvExactly(size, timeout: 5) == payload)
            client.shutdownWrite()
            #expect(try client.readToEnd(timeout: 5).end == .eof)
        }
        #expect(await proxy.waitForLines(containing: "bridge closed", count: 2, timeout: 5) != nil)
        let text = try await PrometheusText.scrape(proxy)
        for (server, size) in zip(servers, [1000.0, 3000.0]) {
            let target = "target=\"127.0.0.1:\(server.port)\""
            for direction in ["upstream", "downstream"] {
                let value = text.split(separator: "\n").first {
                    $0.hasPrefix("tcpproxy_target_bytes_total{") && $0.contains(target) && $0.contains("direction=\"\(direction)\"")
                }.flatMap { Double($0.split(separator: " ").last!) }
                #expect(value == size, "\(target) \(direction):\n\(text)")
            }
        }
    }

    @Test("leastconn sends each new client to the target with the fewest open bridges per weight")
    func leastconn() async throws {
        func named(_ name: String) throws -> TestServer {
            try TestServer { socket, index, server in
                try? socket.send(name, timeout: 5)
                TestServer.echo(socket, index, server)
            }
        }
        let light = try named("light")
        defer { light.stop() }
        let heavy = try named("heavy")
        defer { heavy.stop() }
        let proxy = try await ProxyProcess.start([
            "forward", "--listen", "127.0.0.1:0", "--balance", "leastconn",
            "--target", "127.0.0.1:\(light.port)", "--target", "127.0.0.1:\(heavy.port),weight=3",
        ])
        defer { proxy.kill() }
        // Clients that stay open: after the first tie, the weight-3 target takes three for the other's one.
        var held: [TestSocket] = []
        defer { held.forEach { $0.close() } }
        var names: [String] = []
        for _ in 0..<8 {
            let client = try TestSocket.connect(port: proxy.port)
            held.append(client)
            names.append(String(decoding: try client.recvExactly(5, timeout: 5), as: UTF8.self))
        }
        #expect(names.filter { $0 == "light" }.count == 2, "\(names)")
        #expect(names.filter { $0 == "heavy" }.count == 6, "\(names)")
    }

    @Test("a dead target loses no client: each is tried on the next target, and the dead one is marked down")
    func failover() async throws {
        let alive = try ["a", "b"].map(self.namedServer)
        defer { alive.forEach { $0.stop() } }
        let dead = refusedPort
        let proxy = try await ProxyProcess.start([
            "forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:\(dead)",
            "--target", "127.0.0.1:\(alive[0].port)", "--target", "127.0.0.1:\(alive[1].port)",
        ])
        defer { proxy.kill() }
        let picks = try await self.answers(proxy, count: 20)
        #expect(picks.allSatisfy { $0 == "a" || $0 == "b" }, "\(picks)")
        #expect(picks.filter { $0 == "a" }.count >= 5 && picks.filter { $0 == "b" }.count >= 5)
        #expect(await proxy.waitForLines(containing: "target down", count: 1, timeout: 2)?.count == 1, "\(proxy.stderr)")
        #expect(proxy.lines(containing: "connectFailed").isEmpty)
    }

    @Test("killing a target mid-run loses no client; with health checks it gets traffic again once back")
    func healthChecks() async throws {
        let steady = try self.namedServer("steady")
        defer { steady.stop() }
        var flaky = try self.namedServer("flaky")
        let flakyPort = flaky.port
        let proxy = try await ProxyProcess.start([
            "forward", "--listen", "127.0.0.1:0", "--health-interval", "0.2",
            "--target", "127.0.0.1:\(steady.port)", "--target", "127.0.0.1:\(flakyPort)",
        ])
        defer { proxy.kill() }
        #expect(Set(try await self.answers(proxy, count: 4)) == ["steady", "flaky"])

        flaky.stop()
        // stop() is asynchronous: wait until the port refuses connections.
        for _ in 0..<50 {
            guard let probe = try? TestSocket.connect(port: flakyPort, timeout: 0.2) else { break }
            probe.close()
            await delay(seconds: 0.05)
        }
        let during = try await self.answers(proxy, count: 10)
        #expect(during.allSatisfy { $0 == "steady" }, "no client lost while a healthy target exists: \(during) \(proxy.stderr)")
        #expect(await proxy.waitForLine(containing: "target down", timeout: 3) != nil)

        // Back on the same port: after two good checks it takes clients again.
        flaky = try TestServer(port: flakyPort, handler: TestServer.sendThenClose(Array("flaky".utf8)))
        defer { flaky.stop() }
        #expect(await proxy.waitForLine(containing: "target up", timeout: 5) != nil)
        #expect(try await self.answers(proxy, count: 6).contains("flaky"))
    }

    /// What a server receives first from a proxy started with `extra`, for one client from `host`.
    private func headerBytes(_ extra: [String], host: String = "127.0.0.1") async throws -> (received: [UInt8], client: Int, proxy: Int) {
        let server = try TestServer(host: host)
        defer { server.stop() }
        let listen = host.contains(":") ? "[\(host)]:0" : "\(host):0"
        let target = host.contains(":") ? "[\(host)]:\(server.port)" : "\(host):\(server.port)"
        let proxy = try await ProxyProcess.start(["forward", "--listen", listen, "--target", target] + extra)
        defer { proxy.kill() }
        let client = try TestSocket.connect(host: host, port: proxy.port)
        defer { client.close() }
        try client.send("hello")
        let upstream = try server.accept(timeout: 5)
        defer { upstream.close() }
        var received: [UInt8] = []
        while !received.suffix(5).elementsEqual(Array("hello".utf8)) {
            guard case .data(let bytes) = try upstream.recv(timeout: 5) else { break }
            received += bytes
        }
        return (Array(received.dropLast(5)), client.localPort, proxy.port)
    }

    /// Both engines write the header: `--engine direct` is refused where the direct engine cannot serve.
    static let engines = [["--engine", "direct"], ["--engine", "nio"]]

    @Test("--proxy-protocol v1 sends the exact text header, IPv4 and IPv6", arguments: engines)
    func sendV1(engine: [String]) async throws {
        let v4 = try await self.headerBytes(["--proxy-protocol", "v1"] + engine)
        #expect(String(decoding: v4.received, as: UTF8.self) == "PROXY TCP4 127.0.0.1 127.0.0.1 \(v4.client) \(v4.proxy)\r\n")
        if ipv6LoopbackAvailable {
            let v6 = try await self.headerBytes(["--proxy-protocol", "v1"] + engine, host: "::1")
            #expect(String(decoding: v6.received, as: UTF8.self) == "PROXY TCP6 ::1 ::1 \(v6.client) \(v6.proxy)\r\n")
        }
    }

    @Test("--proxy-protocol v2 sends the exact binary header, IPv4 and IPv6", arguments: engines)
    func sendV2(engine: [String]) async throws {
        let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
        func port(_ value: Int) -> [UInt8] { [UInt8(value >> 8), UInt8(value & 0xFF)] }
        let v4 = try await self.headerBytes(["--proxy-protocol", "v2"] + engine)
        #expect(v4.received == signature + [0x21, 0x11, 0, 12, 127, 0, 0, 1, 127, 0, 0, 1] + port(v4.client) + port(v4.proxy))
        if ipv6LoopbackAvailable {
            let v6 = try await self.headerBytes(["--proxy-protocol", "v2"] + engine, host: "::1")
            let loopback: [UInt8] = Array(repeating: 0, count: 15) + [1]
            #expect(v6.received == signature + [0x21, 0x21, 0, 36] + loopback + loopback + port(v6.client) + port(v6.proxy))
        }
    }

    @Test("--accept-proxy-protocol behind a --proxy-protocol v2 tcpproxy logs the original client and applies --allow to it")
    func chained() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let inner = try await ProxyProcess.forward(to: server.port, ["--accept-proxy-protocol"])
        defer { inner.kill() }
        let outer = try await ProxyProcess.forward(to: inner.port, ["--proxy-protocol", "v2"])
        defer { outer.kill() }
        let client = try TestSocket.connect(port: outer.port)
        defer { client.close() }
        try client.send("through two proxies")
        #expect(try client.recvExactly(19, timeout: 5) == Array("through two proxies".utf8))
        let accepted = try #require(await inner.waitForLine(containing: "bridge accepted", timeout: 5))
        #expect(accepted.contains("client.address=127.0.0.1:\(client.localPort)"), "\(accepted)")

        // The inner proxy's --allow sees the original client's address from the header.
        let strict = try await ProxyProcess.forward(to: server.port, ["--accept-proxy-protocol", "--allow", "10.0.0.0/8"])
        defer { strict.kill() }
        let front = try await ProxyProcess.forward(to: strict.port, ["--proxy-protocol", "v1"])
        defer { front.kill() }
        let refused = try TestSocket.connect(port: front.port)
        defer { refused.close() }
        try? refused.send("x")
        #expect(try refused.readToEnd(timeout: 5).bytes.isEmpty)
        #expect(await strict.waitForLine(containing: "close.reason=notAllowed", timeout: 5) != nil)
    }

    @Test("--accept-proxy-protocol closes a client without a valid header, with a log line, and keeps serving")
    func missingHeader() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(
            to: server.port,
            ["--accept-proxy-protocol", "--max-connections", "1", "--metrics", "127.0.0.1:0"]
        )
        defer { proxy.kill() }
        let bad = try TestSocket.connect(port: proxy.port)
        try bad.send("GET / HTTP/1.1\r\n\r\n")
        #expect(try bad.readToEnd(timeout: 5).bytes.isEmpty)
        bad.close()
        #expect(await proxy.waitForLine(containing: "badProxyHeader", timeout: 5) != nil)
        let text = try await PrometheusText.scrape(proxy)
        #expect(PrometheusText.value(text, "tcpproxy_connections_rejected_total", "reason=\"badProxyHeader\"") == 1, "\(text)")
        // The slot came back: a good client (with a header) is served.
        let good = try TestSocket.connect(port: proxy.port)
        defer { good.close() }
        try good.send("PROXY TCP4 192.0.2.9 192.0.2.1 4242 80\r\nping")
        #expect(try good.recvExactly(4, timeout: 5) == Array("ping".utf8))
        #expect(await proxy.waitForLine(containing: "client.address=192.0.2.9:4242", timeout: 5) != nil)
    }

    @Test("SIGTERM while a client is still sending its PROXY header: it is closed at once and the process exits within the drain")
    func drainDuringHeader() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--accept-proxy-protocol", "--drain-timeout", "2"])
        defer { proxy.kill() }
        let client = try TestSocket.connect(port: proxy.port)
        defer { client.close() }
        try client.send("PROXY")
        await delay(seconds: 0.3)
        let started = now()
        proxy.terminate()
        let end = await client.waitForEnd(timeout: 5)
        #expect(end.end.isClosed, "closed: \(end.end)")
        // The rest of the header after the signal would otherwise have made a bridge the drain never ends.
        _ = client.trySend(Array(" TCP4 192.0.2.9 192.0.2.1 4242 80\r\nhello".utf8))
        #expect(await proxy.waitForExit(timeout: 6) == 0)
        #expect(now() - started < 2.5, "exited within the drain timeout, after \(now() - started) s")
        let line = try #require(proxy.lines(containing: "connection rejected").first)
        #expect(logValue("close.reason", in: line) == "drainTimeout", "\(line)")
        #expect(proxy.lines(containing: "bridge accepted").isEmpty)
    }

    @Test("A client closed mid-PROXY-header by the drain counts as rejected (drainTimeout) while a bridge keeps the drain going")
    func drainDuringHeaderCounted() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(
            to: server.port,
            ["--accept-proxy-protocol", "--drain-timeout", "5", "--metrics", "127.0.0.1:0"]
        )
        defer { proxy.kill() }
        let bridged = try TestSocket.connect(port: proxy.port)
        defer { bridged.close() }
        try bridged.send("PROXY TCP4 192.0.2.9 192.0.2.1 4242 80\r\nping")
        #expect(try bridged.recvExactly(4, timeout: 5) == Array("ping".utf8))
        let halfway = try TestSocket.connect(port: proxy.port)
        defer { halfway.close() }
        try halfway.send("PROXY")
        // Accepted by the proxy before the signal (on a loaded machine the connect may still sit in the backlog).
        var accepted: Double? = nil
        for _ in 0..<50 where accepted != 2 {
            accepted = PrometheusText.value(try await PrometheusText.scrape(proxy), "tcpproxy_connections_accepted_total")
            if accepted != 2 { await delay(seconds: 0.1) }
        }
        #expect(accepted == 2)
        proxy.terminate()
        #expect(await halfway.waitForEnd(timeout: 5).end.isClosed)
        #expect(await proxy.waitForLine(containing: "drainTimeout", timeout: 3) != nil)
        let text = try await PrometheusText.scrape(proxy)
        #expect(PrometheusText.value(text, "tcpproxy_connections_rejected_total", "reason=\"drainTimeout\"") == 1, "\(text)")
        #expect(PrometheusText.value(text, "tcpproxy_bridges_active") == 1, "the bridge is still served: \(text)")
        bridged.shutdownWrite()
        #expect(await proxy.waitForExit(timeout: 6) == 0)
    }

    @Test("--trusted-proxy: a peer outside it cannot claim an allowed address in a forged header")
    func trustedProxy() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let forged = "PROXY TCP4 10.9.9.9 127.0.0.1 1234 80\r\nping"
        let strict = try await ProxyProcess.forward(to: server.port, [
            "--accept-proxy-protocol", "--allow", "10.0.0.0/8", "--trusted-proxy", "192.0.2.0/24",
        ])
        defer { strict.kill() }
        let refused = try TestSocket.connect(port: strict.port)
        defer { refused.close() }
        try? refused.send(forged)
        #expect(try refused.readToEnd(timeout: 5).bytes.isEmpty, "a forged header from an untrusted peer is refused")
        #expect(await strict.waitForLine(containing: "close.reason=notAllowed", timeout: 5) != nil)

        let trusting = try await ProxyProcess.forward(to: server.port, [
            "--accept-proxy-protocol", "--allow", "10.0.0.0/8", "--trusted-proxy", "127.0.0.1",
        ])
        defer { trusting.kill() }
        let client = try TestSocket.connect(port: trusting.port)
        defer { client.close() }
        try client.send(forged)
        #expect(try client.recvExactly(4, timeout: 5) == Array("ping".utf8), "a trusted sender's header is honoured")
        #expect(trusting.lines(containing: "accepting PROXY headers from any peer").isEmpty)
    }

    @Test("an unreachable target does not use up the connect timeout: the next target still serves the client")
    func unreachableTargetSharesTheBudget() async throws {
        // A listener with a full accept queue drops SYNs: connects to it hang until they time out.
        let blackhole = try TestServer(backlog: 0)
        defer { blackhole.stop() }
        let filler = try TestSocket.connect(port: blackhole.port)
        defer { filler.close() }
        let alive = try self.namedServer("alive")
        defer { alive.stop() }
        let proxy = try await ProxyProcess.start([
            "forward", "--listen", "127.0.0.1:0", "--connect-timeout", "3",
            "--target", "127.0.0.1:\(blackhole.port)", "--target", "127.0.0.1:\(alive.port)",
        ])
        defer { proxy.kill() }
        let started = now()
        #expect(try await self.answers(proxy, count: 1) == ["alive"])
        #expect(now() - started < 3, "served within the connect timeout")
    }
}
