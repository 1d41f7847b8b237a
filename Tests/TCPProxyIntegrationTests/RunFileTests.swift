import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// SPEC §1: `tcpproxy run CONFIG.yaml` runs many listeners from one file, and SIGHUP re-reads it: listeners
/// that did not change keep their sockets and connections.
@Suite("run CONFIG.yaml and SIGHUP", .ownThread)
struct RunFileTests {
    /// A file in a directory of its own, removed at the end.
    final class ConfigFile {
        let directory: URL
        let path: String

        init() throws {
            self.directory = FileManager.default.temporaryDirectory.appendingPathComponent("tcpproxy-run-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: self.directory, withIntermediateDirectories: true)
            self.path = self.directory.appendingPathComponent("run.yaml").path
        }

        func write(_ text: String) throws {
            try text.write(toFile: self.path, atomically: true, encoding: .utf8)
        }

        deinit { try? FileManager.default.removeItem(at: self.directory) }
    }

    /// The ports the listeners logged `listening on` for, by listener name, once `count` lines are there.
    static func ports(_ proxy: ProxyProcess, count: Int) async throws -> [String: Int] {
        let lines = try #require(
            await proxy.waitForLines(containing: "info listening on", count: count, timeout: 15),
            "\(count) listening lines; stderr:\n\(proxy.stderr)"
        )
        var ports: [String: Int] = [:]
        for line in lines {
            let address = line.components(separatedBy: "listening on ")[1].prefix { $0 != " " }
            let name = try #require(logValue("listener", in: line))
            ports[name] = Int(address.split(separator: ":").last ?? "")
        }
        return ports
    }

    static func echoes(_ socket: TestSocket, _ text: String) throws -> Bool {
        try socket.send(text)
        return try socket.recvExactly(text.utf8.count, timeout: 5) == Array(text.utf8)
    }

    /// Whether connecting to `port` is refused within `timeout` (a listener closes its socket as it drains).
    static func refuses(port: Int, within timeout: Double = 5) async -> Bool {
        let deadline = now() + timeout
        while now() < deadline {
            guard let socket = try? TestSocket.connect(port: port, timeout: 1) else { return true }
            socket.close()
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
        return false
    }

    @Test("Listeners from one file serve; SIGHUP keeps the unchanged one and its connection, replaces, adds and stops")
    func reload() async throws {
        let first = try TestServer(handler: TestServer.echo)
        let second = try TestServer(handler: TestServer.echo)
        defer {
            first.stop()
            second.stop()
        }
        let file = try ConfigFile()
        try file.write(
            """
            defaults:
              stall-timeout: 30
            listeners:
              - {name: kept, mode: forward, listen: "127.0.0.1:0", target: "127.0.0.1:\(first.port)"}
              - {name: changed, mode: forward, listen: "127.0.0.1:0", target: "127.0.0.1:\(first.port)"}
              - {name: removed, mode: socks, listen: "127.0.0.1:0"}
            """
        )
        let proxy = try ProxyProcess(arguments: ["run", file.path])
        defer { proxy.kill() }
        let before = try await Self.ports(proxy, count: 3)
        let kept = try #require(before["kept"])
        let held = try TestSocket.connect(port: kept)
        defer { held.close() }
        #expect(try Self.echoes(held, "before the reload"))
        #expect(first.acceptedCount == 1)

        try file.write(
            """
            defaults:
              stall-timeout: 30
            listeners:
              - {name: kept, mode: forward, listen: "127.0.0.1:0", target: "127.0.0.1:\(first.port)"}
              - {name: changed, mode: forward, listen: "127.0.0.1:0", target: "127.0.0.1:\(second.port)"}
              - {name: added, mode: forward, listen: "127.0.0.1:0", target: "127.0.0.1:\(second.port)"}
            """
        )
        proxy.signal(SIGHUP)
        let reloaded = try #require(
            await proxy.waitForLine(containing: "reloaded", timeout: 10), "stderr:\n\(proxy.stderr)")
        #expect(logValue("listeners.kept", in: reloaded) == "1")
        #expect(logValue("listeners.restarted", in: reloaded) == "1")
        #expect(logValue("listeners.started", in: reloaded) == "1")
        #expect(logValue("listeners.stopped", in: reloaded) == "1")
        let lines = try #require(await proxy.waitForLines(containing: "info listening on", count: 5, timeout: 10))
        let after = try await Self.ports(proxy, count: 5)
        #expect(lines.filter { logValue("listener", in: $0) == "kept" }.count == 1, "the kept listener was not restarted")

        // The connection made before the reload still flows, and the kept socket still accepts.
        #expect(try Self.echoes(held, "after the reload"))
        let again = try TestSocket.connect(port: kept)
        defer { again.close() }
        #expect(try Self.echoes(again, "a new client"))
        #expect(first.acceptedCount == 2)

        // The changed listener now goes to the second server; the added one too; the removed one is gone.
        for name in ["changed", "added"] {
            let socket = try TestSocket.connect(port: try #require(after[name]))
            defer { socket.close() }
            #expect(try Self.echoes(socket, "to \(name)"))
        }
        #expect(second.acceptedCount == 2)
        #expect(await Self.refuses(port: try #require(before["removed"])))

        // Closed first, so the drain has nothing to wait for.
        held.close()
        again.close()
        proxy.terminate()
        #expect(await proxy.waitForExit(timeout: 15) == 0, "stderr:\n\(proxy.stderr)")
    }

    @Test("A reload that takes a target, or a listener with targets, away removes their tcpproxy_target_up; kept ones stay")
    func reloadForgetsTargetUp() async throws {
        let ports = try (0..<4).map { _ in try TestServer.freePort() }  // never connected to
        func target(_ index: Int) -> String { "\"127.0.0.1:\(ports[index])\"" }
        let file = try ConfigFile()
        try file.write(
            """
            metrics: 127.0.0.1:0
            listeners:
              - {name: a, mode: forward, listen: "127.0.0.1:0", target: [\(target(0)), \(target(1))]}
              - {name: b, mode: forward, listen: "127.0.0.1:0", target: [\(target(0)), \(target(2))]}
            """
        )
        let proxy = try ProxyProcess(arguments: ["run", file.path])
        defer { proxy.kill() }
        _ = try await Self.ports(proxy, count: 2)
        func upSeries() async throws -> Set<String> {
            let text = try await PrometheusText.scrape(proxy)
            return Set(text.split(separator: "\n").filter { $0.hasPrefix("tcpproxy_target_up{") }.map { line in
                let labels = line.drop { $0 != "{" }.prefix { $0 != "}" }
                let listener = labels.components(separatedBy: "listener=\"")[1].prefix { $0 != "\"" }
                let target = labels.components(separatedBy: "target=\"")[1].prefix { $0 != "\"" }
                return "\(listener) \(target.split(separator: ":").last!)"
            })
        }
        #expect(try await upSeries() == ["a \(ports[0])", "a \(ports[1])", "b \(ports[0])", "b \(ports[2])"])

        try file.write(
            """
            metrics: 127.0.0.1:0
            listeners:
              - {name: a, mode: forward, listen: "127.0.0.1:0", target: [\(target(0)), \(target(3))]}
            """
        )
        proxy.signal(SIGHUP)
        #expect(await proxy.waitForLine(containing: "reloaded", timeout: 10) != nil, "stderr:\n\(proxy.stderr)")
        _ = try await Self.ports(proxy, count: 3)
        #expect(try await upSeries() == ["a \(ports[0])", "a \(ports[3])"])

        // A listener a reload starts that cannot bind made its series as it was set up: they go with it.
        let occupier = try TestServer()
        defer { occupier.stop() }
        try file.write(
            """
            metrics: 127.0.0.1:0
            listeners:
              - {name: a, mode: forward, listen: "127.0.0.1:0", target: [\(target(0)), \(target(3))]}
              - {name: c, mode: forward, listen: "127.0.0.1:\(occupier.port)", target: [\(target(1)), \(target(2))]}
            """
        )
        proxy.signal(SIGHUP)
        #expect(await proxy.waitForLine(containing: "listener failed to start", timeout: 15) != nil, "stderr:\n\(proxy.stderr)")
        #expect(try await upSeries() == ["a \(ports[0])", "a \(ports[3])"])
    }

    @Test("A file that no longer parses is reported on SIGHUP, and every listener stays as it was")
    func badReload() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let file = try ConfigFile()
        try file.write("listeners:\n  - {name: web, mode: forward, listen: \"127.0.0.1:0\", target: \"127.0.0.1:\(server.port)\"}\n")
        let proxy = try ProxyProcess(arguments: ["run", file.path])
        defer { proxy.kill() }
        let port = try #require(try await Self.ports(proxy, count: 1)["web"])

        for broken in ["listeners: [\n", "listeners:\n  - {name: web, mode: forward, listen: \"127.0.0.1:0\"}\n"] {
            try file.write(broken)
            proxy.signal(SIGHUP)
            let failures = await proxy.waitForLines(containing: "reload failed", count: broken.hasPrefix("listeners: [") ? 1 : 2, timeout: 10)
            #expect(failures != nil, "stderr:\n\(proxy.stderr)")
        }
        #expect(proxy.lines(containing: "reload failed").last?.contains("Missing expected argument '--target") == true)
        #expect(proxy.lines(containing: "listener stopped").isEmpty)
        let socket = try TestSocket.connect(port: port)
        defer { socket.close() }
        #expect(try Self.echoes(socket, "still here"))

        socket.close()
        proxy.terminate()
        #expect(await proxy.waitForExit(timeout: 15) == 0)
    }

    @Test("A default goes to the listeners whose mode has it; a process-wide capture leaves out mux with a warning; at log-level warning a reload still says so")
    func defaultsCaptureAndQuietReload() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let file = try ConfigFile()
        try file.write(
            """
            log-level: warning
            capture: \(file.directory.path)/all.pcap
            defaults:
              handshake-timeout: 3
              stall-timeout: 20
            listeners:
              - {name: f, mode: forward, listen: "127.0.0.1:0", target: "127.0.0.1:\(server.port)"}
              - {name: s, mode: socks, listen: "127.0.0.1:0"}
              - {name: m, mode: mux, listen: "127.0.0.1:0", tunnel: "127.0.0.1:9"}
            """
        )
        let check = try await ProxyProcess.runToExit(["run", "--check", file.path], timeout: 10)
        #expect(check.status == 0, "stderr:\n\(check.stderr)")
        #expect(check.stdout.contains("f: forward --stall-timeout=20 --listen"), "\(check.stdout)")
        #expect(check.stdout.contains("s: socks --handshake-timeout=3 --stall-timeout=20 --listen"), "\(check.stdout)")

        let proxy = try ProxyProcess(arguments: ["run", file.path])
        defer { proxy.kill() }
        #expect(await proxy.waitForLines(containing: "listening on", count: 3, timeout: 15) != nil, "stderr:\n\(proxy.stderr)")
        let note = await proxy.waitForLine(containing: "capture leaves out mux and demux listeners", timeout: 5)
        #expect(note.flatMap { logValue("listeners", in: $0) } == "m", "stderr:\n\(proxy.stderr)")
        #expect(proxy.lines(containing: "capture leaves out").count == 1)
        proxy.signal(SIGHUP)
        let reloaded = await proxy.waitForLine(containing: "reloaded", timeout: 10)
        #expect(reloaded.flatMap { logValue("listeners.kept", in: $0) } == "3", "stderr:\n\(proxy.stderr)")
        proxy.terminate()
        #expect(await proxy.waitForExit(timeout: 15) == 0, "stderr:\n\(proxy.stderr)")
    }

    @Test("SIGTERM drains every listener of the file (bridges finish), a second SIGTERM exits at once")
    func signals() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let file = try ConfigFile()
        try file.write(
            """
            listeners:
              - {name: a, mode: forward, listen: "127.0.0.1:0", target: "127.0.0.1:\(server.port)", drain-timeout: 60}
              - {name: b, mode: socks, listen: "127.0.0.1:0"}
            """
        )
        let proxy = try ProxyProcess(arguments: ["run", file.path])
        defer { proxy.kill() }
        let ports = try await Self.ports(proxy, count: 2)
        let held = try TestSocket.connect(port: try #require(ports["a"]))
        defer { held.close() }
        #expect(try Self.echoes(held, "before"))

        proxy.terminate()
        #expect(await proxy.waitForLines(containing: "draining", count: 2, timeout: 5) != nil, "stderr:\n\(proxy.stderr)")
        #expect(await Self.refuses(port: try #require(ports["b"])))
        // The open bridge goes on while the drain lasts; a SIGHUP now changes nothing.
        proxy.signal(SIGHUP)
        #expect(try Self.echoes(held, "while draining"))
        #expect(proxy.isRunning)
        #expect(proxy.lines(containing: "reloaded").isEmpty)

        proxy.terminate()
        #expect(await proxy.waitForExit(timeout: 5) == 0, "stderr:\n\(proxy.stderr)")
        #expect(proxy.lines(containing: "exiting at once").count == 1)
    }

    @Test("A second SIGTERM exits at once even after every listener stopped, while a capture pipe that takes nothing is closed")
    func secondSignalWhileClosingCapture() async throws {
        let pipe = try StuckPipe()
        defer { pipe.remove() }
        let server = try TestServer(handler: TestServer.discard)
        defer { server.stop() }
        let file = try ConfigFile()
        try file.write(
            """
            capture: \(pipe.path)
            listeners:
              - {name: a, mode: forward, listen: "127.0.0.1:0", target: "127.0.0.1:\(server.port)", drain-timeout: 1}
            """
        )
        let proxy = try ProxyProcess(arguments: ["run", file.path])
        defer { proxy.kill() }
        let ports = try await Self.ports(proxy, count: 1)
        // More than the pipe takes: the capture writer blocks with records still queued.
        let client = try TestSocket.connect(port: try #require(ports["a"]))
        try client.send(pattern(count: 300_000, seed: 6), timeout: 10)
        client.close()
        #expect(await proxy.waitForLine(containing: "bridge closed", timeout: 5) != nil)

        proxy.terminate()
        #expect(await proxy.waitForLine(containing: "listener stopped", timeout: 5) != nil, "\(proxy.stderr)")
        let started = now()
        proxy.terminate()
        #expect(await proxy.waitForExit(timeout: 5) == 0, "stderr:\n\(proxy.stderr)")
        #expect(now() - started < 3, "at once, not after the capture's 10 s")
    }

    @Test("A changed listener on a fixed port is started again on that port once the old one lets go")
    func replaceOnSamePort() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let port = try TestServer.freePort()
        let file = try ConfigFile()
        let entry = "{name: web, mode: forward, listen: \"127.0.0.1:\(port)\", target: \"127.0.0.1:\(server.port)\""
        try file.write("listeners:\n  - \(entry)}\n")
        let proxy = try ProxyProcess(arguments: ["run", file.path])
        defer { proxy.kill() }
        _ = try await Self.ports(proxy, count: 1)
        // Held open across the reload: the old listener drains it while the new one serves.
        let held = try TestSocket.connect(port: port)
        defer { held.close() }
        #expect(try Self.echoes(held, "old"))

        try file.write("listeners:\n  - \(entry), idle-timeout: 60}\n")
        proxy.signal(SIGHUP)
        let ports = try await Self.ports(proxy, count: 2)
        #expect(ports["web"] == port)
        let socket = try TestSocket.connect(port: port)
        defer { socket.close() }
        #expect(try Self.echoes(socket, "new"))
        #expect(try Self.echoes(held, "old, draining"), "a drained bridge goes on until the drain timeout")
        // The new listener's bridge is not numbered again from 1 beside the old one's: an id names one bridge.
        let ids = (await proxy.waitForLines(containing: "bridge accepted", count: 2, timeout: 5) ?? []).map { logValue("bridge.id", in: $0) }
        #expect(ids.count == 2 && ids[0] != ids[1], "\(ids)")

        held.close()
        socket.close()
        proxy.terminate()
        #expect(await proxy.waitForExit(timeout: 20) == 0)
    }

    @Test("A listener a reload cannot start is logged, the rest run on, and the next SIGHUP starts it")
    func reloadStartFailure() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let occupier = try TestServer()
        let busy = occupier.port
        let file = try ConfigFile()
        let web = "  - {name: web, mode: forward, listen: \"127.0.0.1:0\", target: \"127.0.0.1:\(server.port)\"}\n"
        try file.write("listeners:\n" + web)
        let proxy = try ProxyProcess(arguments: ["run", file.path])
        defer { proxy.kill() }
        let port = try #require(try await Self.ports(proxy, count: 1)["web"])

        try file.write("listeners:\n" + web + "  - {name: late, mode: forward, listen: \"127.0.0.1:\(busy)\", target: \"127.0.0.1:\(server.port)\"}\n")
        proxy.signal(SIGHUP)
        let failed = await proxy.waitForLine(containing: "listener failed to start", timeout: 15)
        #expect(failed?.contains("address already in use") == true, "stderr:\n\(proxy.stderr)")
        #expect(proxy.isRunning)
        let socket = try TestSocket.connect(port: port)
        defer { socket.close() }
        #expect(try Self.echoes(socket, "web runs on"))

        // Same file, port free now: the failed entry is not "kept", it is started.
        occupier.stop()
        proxy.signal(SIGHUP)
        let reloaded = await proxy.waitForLines(containing: "reloaded", count: 2, timeout: 10)
        #expect(reloaded.map { logValue("listeners.started", in: $0[1]) } == "1", "stderr:\n\(proxy.stderr)")
        let ports = try await Self.ports(proxy, count: 2)
        #expect(ports["late"] == busy)
        let late = try TestSocket.connect(port: busy)
        defer { late.close() }
        #expect(try Self.echoes(late, "late but here"))

        socket.close()
        late.close()
        proxy.terminate()
        #expect(await proxy.waitForExit(timeout: 15) == 0)
    }

    @Test("A SOCKS entry whose users file changed is restarted by SIGHUP, though its options did not change")
    func usersFileChange() async throws {
        let file = try ConfigFile()
        let users = file.directory.appendingPathComponent("users.txt").path
        try "alice:one\n".write(toFile: users, atomically: true, encoding: .utf8)
        try file.write("listeners:\n  - {name: s, mode: socks, listen: \"127.0.0.1:0\", users: \"\(users)\"}\n")
        let proxy = try ProxyProcess(arguments: ["run", file.path])
        defer { proxy.kill() }
        _ = try await Self.ports(proxy, count: 1)

        proxy.signal(SIGHUP)
        let same = try #require(await proxy.waitForLine(containing: "reloaded", timeout: 10))
        #expect(logValue("listeners.kept", in: same) == "1")

        try "alice:two\n".write(toFile: users, atomically: true, encoding: .utf8)
        proxy.signal(SIGHUP)
        let changed = try #require(await proxy.waitForLines(containing: "reloaded", count: 2, timeout: 10))
        #expect(logValue("listeners.restarted", in: changed[1]) == "1", "stderr:\n\(proxy.stderr)")
        _ = try await Self.ports(proxy, count: 2)

        proxy.terminate()
        #expect(await proxy.waitForExit(timeout: 15) == 0)
    }

    static let badFiles: [(String, String)] = [
        ("listeners:\n  - {mode: forward, listen: \"127.0.0.1:0\", target: \"127.0.0.1:9\", bogus: 1}\n", "Unknown option '--bogus'"),
        ("listeners:\n  - {mode: forward, listen: \"127.0.0.1:0\", target: \"127.0.0.1:9\", threads: 2}\n", "line 2: `threads` applies to the whole process"),
        ("listeners:\n  - {mode: forward, listen: \"127.0.0.1:0\", target: \"127.0.0.1:9\", stall-timeout: -1}\n", "--stall-timeout"),
        ("threads: 0\nlisteners:\n  - {mode: socks, listen: \"127.0.0.1:0\"}\n", "--threads"),
        ("listeners:\n  - {mode: tunnel, listen: \"127.0.0.1:0\"}\n", "unknown mode `tunnel`"),
        ("listeners: [\n", "not valid YAML"),
        ("listeners:\n  - {mode: transparent, listen: \"127.0.0.1:0\", interception: sideways}\n", "sideways"),
        // Listeners that send clients to one another in a circle, directly or through a mux and a demux.
        (
            "listeners:\n  - {name: a, mode: forward, listen: \"127.0.0.1:20351\", target: \"127.0.0.1:20352\"}\n"
                + "  - {name: b, mode: forward, listen: \"127.0.0.1:20352\", target: \"localhost:20351\"}\n",
            "listeners `a` → `b` → `a` send clients round in a loop"
        ),
        (
            "listeners:\n  - {name: m, mode: mux, listen: \"127.0.0.1:20353\", tunnel: \"127.0.0.1:20354\"}\n"
                + "  - {name: d, mode: demux, listen: \"127.0.0.1:20354\", target: \"127.0.0.1:20355\"}\n"
                + "  - {name: f, mode: forward, listen: \"127.0.0.1:20355\", target: [\"127.0.0.1:9\", \"127.0.0.1:20353\"]}\n",
            "listeners `m` → `d` → `f` → `m` send clients round in a loop"
        ),
        // Addresses that are not the same text but could not both be bound.
        (
            "listeners:\n  - {name: a, mode: socks, listen: \":20312\"}\n  - {name: b, mode: socks, listen: \"127.0.0.1:20312\"}\n",
            "listener `b`: listens on 127.0.0.1:20312, which clashes with listener `a` on 0.0.0.0:20312"
        ),
        (
            "listeners:\n  - {name: a, mode: socks, listen: \"localhost:20313\"}\n  - {name: b, mode: socks, listen: \"127.0.0.1:20313\"}\n",
            "listener `b`: listens on 127.0.0.1:20313, which clashes with listener `a` on localhost:20313"
        ),
        (
            "metrics: 127.0.0.1:20314\nlisteners:\n  - {name: a, mode: socks, listen: \"[::]:20314\"}\n",
            "listener `a`: listens on [::]:20314, which clashes with the `metrics` endpoint on 127.0.0.1:20314"
        ),
    ]

    @Test("A file that cannot be used exits 64 with one line naming the problem, before listening", arguments: badFiles)
    func badFile(text: String, message: String) async throws {
        let file = try ConfigFile()
        try file.write(text)
        let result = try await ProxyProcess.runToExit(["run", file.path], timeout: 10)
        #expect(result.status == 64, "status \(String(describing: result.status)); stderr:\n\(result.stderr)")
        let lines = result.stderr.split(separator: "\n")
        #expect(lines.count == 1 && lines[0].contains(message) && lines[0].contains(file.path), "stderr:\n\(result.stderr)")
        #expect(!result.stderr.contains("listening on"))
    }

    @Test(
        "Every mode can be a listener of the file, with one metrics endpoint; transparent's --mode is written `interception`",
        .enabled(if: getuid() == 0, "tproxy interception needs CAP_NET_ADMIN (IP_TRANSPARENT)")
    )
    func everyMode() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let file = try ConfigFile()
        try file.write(
            """
            metrics: 127.0.0.1:0
            listeners:
              - {name: f, mode: forward, listen: "127.0.0.1:0", target: "127.0.0.1:\(server.port)"}
              - {name: s, mode: socks, listen: "127.0.0.1:0"}
              - {name: t, mode: transparent, listen: "127.0.0.1:0", interception: tproxy}
              - {name: d, mode: demux, listen: "127.0.0.1:0", target: "127.0.0.1:\(server.port)"}
            """
        )
        let proxy = try ProxyProcess(arguments: ["run", file.path])
        defer { proxy.kill() }
        let ports = try await Self.ports(proxy, count: 4)
        #expect(Set(ports.keys) == ["f", "s", "t", "d"], "stderr:\n\(proxy.stderr)")
        #expect(proxy.lines(containing: "listener=t").first?.contains("tproxy") == true, "stderr:\n\(proxy.stderr)")
        // One endpoint for the whole file; each listener's series carry its entry's name.
        let metrics = try await PrometheusText.scrape(proxy)
        for name in ["f", "s", "t", "d"] {
            #expect(metrics.contains("tcpproxy_connections_accepted_total{listener=\"\(name)\""), "\(name) in:\n\(metrics)")
        }
        proxy.terminate()
        #expect(await proxy.waitForExit(timeout: 15) == 0)
    }

    @Test("--check prints what the file would run and exits 0 without listening; a bad file exits 64")
    func check() async throws {
        let file = try ConfigFile()
        try file.write("listeners:\n  - {name: web, mode: forward, listen: \"127.0.0.1:0\", target: [\"127.0.0.1:9\", \"127.0.0.1:10\"]}\n")
        let good = try await ProxyProcess.runToExit(["run", "--check", file.path], timeout: 10)
        #expect(good.status == 0, "stderr:\n\(good.stderr)")
        #expect(
            good.stdout.split(separator: "\n") == [
                "\(file.path): 1 listener, ok", "  web: forward --listen=127.0.0.1:0 --target=127.0.0.1:9 --target=127.0.0.1:10",
            ]
        )
        #expect(!good.stderr.contains("listening on"))

        try file.write("listeners:\n  - {name: web, mode: forward, listen: \"127.0.0.1:0\"}\n")
        let bad = try await ProxyProcess.runToExit(["run", "--check", file.path], timeout: 10)
        #expect(bad.status == 64)
        #expect(bad.stderr.contains("listener `web`: Missing expected argument '--target"), "stderr:\n\(bad.stderr)")

        // A chain that ends at a server is no loop.
        try file.write(
            """
            listeners:
              - {name: a, mode: forward, listen: "127.0.0.1:20356", target: "127.0.0.1:20357"}
              - {name: b, mode: forward, listen: "127.0.0.1:20357", target: "127.0.0.1:9"}

            """
        )
        let chain = try await ProxyProcess.runToExit(["run", "--check", file.path], timeout: 10)
        #expect(chain.status == 0, "stderr:\n\(chain.stderr)")

        // Two entries on one address could not both bind: the check says so (two on port 0 are fine).
        try file.write(
            """
            listeners:
              - {name: a, mode: forward, listen: "127.0.0.1:20311", target: "127.0.0.1:9"}
              - {name: b, mode: socks, listen: "127.0.0.1:20311"}
              - {name: c, mode: forward, listen: "127.0.0.1:0", target: "127.0.0.1:9"}
              - {name: d, mode: forward, listen: "127.0.0.1:0", target: "127.0.0.1:9"}

            """
        )
        let clash = try await ProxyProcess.runToExit(["run", "--check", file.path], timeout: 10)
        #expect(clash.status == 64)
        #expect(
            clash.stderr.contains("listener `b`: listens on 127.0.0.1:20311, which clashes with listener `a` on 127.0.0.1:20311"),
            "stderr:\n\(clash.stderr)"
        )
    }

    @Test("A missing file exits 64; a listener of the file that cannot bind exits 1, naming the address")
    func startFailures() async throws {
        let missing = try await ProxyProcess.runToExit(["run", "/nonexistent/run.yaml"], timeout: 10)
        #expect(missing.status == 64)
        #expect(missing.stderr.contains("cannot read /nonexistent/run.yaml: no such file or directory"))

        let occupier = try TestServer()
        defer { occupier.stop() }
        let file = try ConfigFile()
        try file.write(
            """
            listeners:
              - {name: free, mode: socks, listen: "127.0.0.1:0"}
              - {name: taken, mode: forward, listen: "127.0.0.1:\(occupier.port)", target: "127.0.0.1:9"}
            """
        )
        let result = try await ProxyProcess.runToExit(["run", file.path], timeout: 15)
        #expect(result.status == 1, "status \(String(describing: result.status)); stderr:\n\(result.stderr)")
        #expect(result.stderr.contains("cannot listen on 127.0.0.1:\(occupier.port): address already in use"), "stderr:\n\(result.stderr)")
    }
}
