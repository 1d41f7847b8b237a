import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What only the direct engine (`--engine auto|direct`) must get right: which listeners it refuses, that
/// `auto` picks it, its own connect handling (refused, pending, timed out, a client gone meanwhile), its
/// threads, and what an idle bridge costs. SPEC §2 itself runs on it through ``DataPath``.
@Suite("Direct engine", .ownThread)
struct DirectEngineTests {
    // MARK: Choosing the engine

    static let obstacles: [(arguments: [String], obstacle: String)] = [
        (["socks", "--listen", "127.0.0.1:0"], "only forward and transparent mode"),
        (["transparent", "--listen", "127.0.0.1:0", "--log-data"], "--log-data"),
        (["mux", "--listen", "127.0.0.1:0", "--tunnel", "127.0.0.1:9"], "only forward and transparent mode"),
        (["demux", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9"], "only forward and transparent mode"),
        (
            ["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--target", "127.0.0.1:10"],
            "several targets"
        ),
        (["forward", "--listen", "127.0.0.1:0", "--target", "localhost:9"], "a target given by name"),
        (["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--log-data"], "--log-data"),
        (["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--upstream-rate", "1M"], "rates"),
        (["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--capture", "CAPTURE"], "--capture"),
        (["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--latency", "5"], "--latency"),
        (["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--corrupt", "0.1"], "--corrupt"),
        (["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--health-interval", "1"], "health checks"),
        (
            ["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--accept-proxy-protocol"],
            "--accept-proxy-protocol"
        ),
    ]

    @Test(
        "--engine direct on a listener it cannot serve: exit 64, one Error: line naming the obstacle",
        arguments: obstacles
    )
    func refusesListener(arguments: [String], obstacle: String) async throws {
        let capture = FileManager.default.temporaryDirectory
            .appendingPathComponent("tcpproxy-direct-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).pcap").path
        defer { try? FileManager.default.removeItem(atPath: capture) }
        let arguments = arguments.map { $0 == "CAPTURE" ? capture : $0 } + ["--engine", "direct"]
        let result = try await ProxyProcess.runToExit(arguments, timeout: 10)
        #expect(result.status == 64, "status \(String(describing: result.status)); stderr:\n\(result.stderr)")
        let errorLines = result.stderr.split(separator: "\n").filter { $0.contains("Error:") }
        #expect(errorLines.count == 1, "one Error: line; stderr:\n\(result.stderr)")
        #expect(errorLines.first?.contains("--engine direct") == true, "stderr:\n\(result.stderr)")
        #expect(errorLines.first?.contains(obstacle) == true, "names '\(obstacle)'; stderr:\n\(result.stderr)")
        #expect(result.stderr.contains("Usage: tcpproxy \(arguments[0])"), "the mode's own usage; stderr:\n\(result.stderr)")
        #expect(!result.stderr.contains("listening on"), "nothing was started; stderr:\n\(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: capture), "no capture file is left behind")
    }

    @Test("--engine bogus: exit 64, naming the value and the choices")
    func unknownEngine() async throws {
        let result = try await ProxyProcess.runToExit(
            ["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--engine", "bogus"],
            timeout: 10
        )
        #expect(result.status == 64, "status \(String(describing: result.status)); stderr:\n\(result.stderr)")
        let errorLines = result.stderr.split(separator: "\n").filter { $0.contains("Error:") }
        #expect(errorLines.count == 1, "stderr:\n\(result.stderr)")
        #expect(errorLines.first?.contains("bogus") == true)
        #expect(errorLines.first?.contains("direct") == true, "the choices are listed; stderr:\n\(result.stderr)")
        #expect(!result.stderr.contains("listening on"))
    }

    @Test("--engine auto picks the direct engine for a plain forward (engine=direct), NIO with --log-data")
    func autoChoosesDirect() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        // The NIO path's line has no engine key at all.
        let cases: [(options: [String], engine: String?)] = [
            (["--engine", "auto"], "direct"), (["--engine", "auto", "--log-data"], nil), (["--engine", "nio"], nil),
        ]
        for (options, expected) in cases {
            let proxy = try await ProxyProcess.forward(to: server.port, options)
            defer { proxy.kill() }
            let line = try #require(proxy.lines(containing: "info listening on").first)
            #expect(logValue("engine", in: line) == expected, "\(options): \(line)")
            // Either way it forwards.
            let client = try TestSocket.connect(port: proxy.port)
            try client.send("ping")
            #expect(try client.recvExactly(4, timeout: 5) == bytes("ping"))
        }
        // ProxyProcess.start waits for the text line first; this one is JSON.
        let json = try ProxyProcess(
            arguments: ["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:\(server.port)", "--log-format", "json"]
        )
        defer { json.kill() }
        let line = try #require(await json.waitForLine(containing: "\"listening on", timeout: 15), "\(json.stderr)")
        #expect(line.contains("\"engine\":\"direct\""), "the default is auto, and auto is direct here: \(line)")
    }

    @Test("--io-uring auto and always batch on the direct engine (io=io_uring, a ring in the process); off does not; all forward")
    func ioUringChoice() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        for (mode, expected) in [("auto", "io_uring"), ("always", "io_uring"), ("off", "syscalls")] {
            let proxy = try await ProxyProcess.forward(to: server.port, ["--engine", "direct", "--io-uring", mode])
            defer { proxy.kill() }
            let line = try #require(proxy.lines(containing: "info listening on").first)
            #expect(logValue("io", in: line) == expected, "--io-uring \(mode): \(line)")
            // Many small exchanges on a few bridges: the path a batch serves.
            let clients = try (0..<4).map { _ in try TestSocket.connect(port: proxy.port) }
            for round in 0..<50 {
                for (index, client) in clients.enumerated() {
                    let message = "m\(index)-\(round);"
                    try client.send(message)
                    #expect(try client.recvExactly(message.utf8.count, timeout: 5) == bytes(message))
                }
            }
            let rings = Self.ioUringDescriptors(of: proxy.pid)
            #expect(mode == "off" ? rings == 0 : rings > 0, "--io-uring \(mode): \(rings) io_uring descriptors")
        }
        let bad = try await ProxyProcess.runToExit(["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--io-uring", "on"])
        #expect(bad.status == 64, "stderr:\n\(bad.stderr)")
        #expect(bad.stderr.contains("--io-uring"), "stderr:\n\(bad.stderr)")
    }

    /// How many io_uring instances `pid` holds (`anon_inode:[io_uring]` in /proc/PID/fd).
    static func ioUringDescriptors(of pid: Int32) -> Int {
        let directory = "/proc/\(pid)/fd"
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return entries.filter { (try? FileManager.default.destinationOfSymbolicLink(atPath: "\(directory)/\($0)")) == "anon_inode:[io_uring]" }.count
    }

    // MARK: Connecting

    @Test("connect refused: the client is closed at once (< 1.5 s), connectFailed, and its slot is given back")
    func connectRefused() async throws {
        // A socket bound but not listening: its port refuses connections, and no other test can take it.
        // Listening on it later turns it into a live target on the same port.
        let target = try ReservedPort()
        let proxy = try await ProxyProcess.forward(
            to: target.port,
            ["--engine", "direct", "--max-connections", "1"]
        )
        defer { proxy.kill() }

        for attempt in 1...3 {
            let client = try TestSocket.connect(port: proxy.port)
            _ = client.trySend(bytes("early"))
            let started = now()
            let end = await client.waitForEnd(timeout: 5)
            let elapsed = now() - started
            #expect(end.end.isClosed, "attempt \(attempt): the client is closed: \(end.end)")
            #expect(elapsed < 1.5, "attempt \(attempt): closed after \(elapsed) s")
            #expect(end.count == 0, "nothing comes back")
            let closed = await proxy.waitForLines(containing: "bridge closed", count: attempt, timeout: 3)
            #expect(closed.flatMap { logValue("close.reason", in: $0[attempt - 1]) } == "connectFailed", "\(proxy.stderr)")
        }
        let failed = proxy.lines(containing: "bridge connect failed")
        #expect(failed.count == 3, "one 'bridge connect failed' line per client:\n\(proxy.stderr)")
        #expect(failed.first.flatMap { logValue("error", in: $0) } == "connection refused", "\(failed.first ?? "")")
        #expect(failed.first.flatMap { logValue("server.address", in: $0) } == "127.0.0.1:\(target.port)")
        #expect(proxy.lines(containing: "connection rejected").isEmpty, "every failed client gave its slot back")

        // The target comes up: with --max-connections 1, the next client is only served if all three
        // failed bridges released their slot.
        try target.startListening()
        let client = try TestSocket.connect(port: proxy.port)
        try client.send("after")
        let upstream = try await onThread { try target.accept(timeout: 5) }
        #expect(try upstream.recvExactly(5, timeout: 5) == bytes("after"))
        try upstream.send("reply")
        #expect(try client.recvExactly(5, timeout: 5) == bytes("reply"))
        #expect(proxy.lines(containing: "connection rejected").isEmpty, "log:\n\(proxy.stderr)")
    }

    @Test("a client that resets while the server connect is pending: clientReset at once, and its slot is free")
    func clientResetWhileConnecting() async throws {
        let (server, filler) = try TestServer.withFullQueue()  // connects to it get no answer
        defer { filler.close(); server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--engine", "direct", "--max-connections", "1"])
        defer { proxy.kill() }

        let doomed = try TestSocket.connect(port: proxy.port)
        try doomed.send("doomed")
        #expect(await proxy.waitForLine(containing: "bridge accepted", timeout: 3) != nil)
        await delay(seconds: 0.2)
        try #require(proxy.lines(containing: "bridge connected").isEmpty, "test precondition: the connect is pending")
        doomed.resetClose()
        let started = now()
        let closed = await proxy.waitForLine(containing: "bridge closed", timeout: 3)
        let elapsed = now() - started
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "clientReset", "\(closed ?? "no close line")")
        #expect(elapsed < 1.5, "the reset ends the bridge without waiting for the connect: \(elapsed) s")
        #expect(proxy.lines(containing: "bridge connected").isEmpty)

        // The slot is free: a second client is admitted (its connect pends as well), then served.
        let next = try TestSocket.connect(port: proxy.port)
        try next.send("next")
        #expect(await proxy.waitForLines(containing: "bridge accepted", count: 2, timeout: 3) != nil, "\(proxy.stderr)")
        #expect(proxy.lines(containing: "connection rejected").isEmpty, "the slot was given back; log:\n\(proxy.stderr)")
        let fillerAccepted = try server.accept(timeout: 2)
        defer { fillerAccepted.close() }
        // The proxy's SYN is retransmitted 1 s and 3 s after the first: the queue has room now.
        let upstream = try await onThread { try server.accept(timeout: 6) }
        defer { upstream.close() }
        #expect(try upstream.recvExactly(4, timeout: 5) == bytes("next"), "the first bridge's connect was abandoned")
        try upstream.send("done")
        #expect(try next.recvExactly(4, timeout: 5) == bytes("done"))
    }

    @Test("--connect-timeout 1 with a connect that never completes: connectTimeout in 1-4 s, slot given back")
    func connectTimeout() async throws {
        let (server, filler) = try TestServer.withFullQueue()  // connects to it get no answer
        defer { filler.close(); server.stop() }
        let proxy = try await ProxyProcess.forward(
            to: server.port,
            ["--engine", "direct", "--connect-timeout", "1", "--max-connections", "1"]
        )
        defer { proxy.kill() }

        for attempt in 1...2 {
            let client = try TestSocket.connect(port: proxy.port)
            try client.send("waiting")
            let started = now()
            let end = await client.waitForEnd(timeout: 8)
            let elapsed = now() - started
            #expect(end.end.isClosed, "attempt \(attempt): the client is closed: \(end.end)")
            #expect((0.8...4).contains(elapsed), "attempt \(attempt): closed after \(elapsed) s")
            let closed = await proxy.waitForLines(containing: "bridge closed", count: attempt, timeout: 3)
            #expect(
                closed.flatMap { logValue("close.reason", in: $0[attempt - 1]) } == "connectTimeout",
                "attempt \(attempt):\n\(proxy.stderr)"
            )
        }
        #expect(proxy.lines(containing: "connection rejected").isEmpty, "the first timed-out bridge gave its slot back")
        #expect(proxy.lines(containing: "bridge connected").isEmpty)
    }

    @Test("data and EOF sent before the server accepts arrive whole, then the reply and EOF come back (rules 2, 5)")
    func earlyDataAndEOF() async throws {
        let (server, filler) = try TestServer.withFullQueue()  // connects to it get no answer
        defer { filler.close(); server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--engine", "direct", "--splice", "never"])
        defer { proxy.kill() }

        // More than one read's worth (the scratch buffer is 64 KiB), all sent, EOF included, while the
        // proxy's connect waits.
        let client = try TestSocket.connect(port: proxy.port)
        let early = pattern(count: 150_000, seed: 21)
        try client.send(early)
        client.shutdownWrite()
        await delay(seconds: 0.3)
        try #require(proxy.lines(containing: "bridge connected").isEmpty, "test precondition: connect still pending")

        let fillerAccepted = try server.accept(timeout: 2)
        defer { fillerAccepted.close() }
        let upstream = try await onThread { try server.accept(timeout: 6) }
        defer { upstream.close() }
        let received = try await onThread { try upstream.readToEnd(timeout: 10) }
        #expect(received.end == .eof, "the client's EOF reaches the server after its data")
        #expect(firstDifference(received.bytes, early) == nil, "\(received.bytes.count) of \(early.count) bytes, intact")

        let reply = pattern(count: 100_000, seed: 22)
        try upstream.send(reply)
        upstream.shutdownWrite()
        let back = try await onThread { try client.readToEnd(timeout: 10) }
        #expect(back.end == .eof)
        #expect(firstDifference(back.bytes, reply) == nil, "\(back.bytes.count) of \(reply.count) bytes, intact")
        let closed = await proxy.waitForLine(containing: "bridge closed", timeout: 5)
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "completed", "\(closed ?? "no close line")")
        #expect(closed.flatMap { logValue("bytes.upstream", in: $0) } == "\(early.count)")
        #expect(closed.flatMap { logValue("bytes.downstream", in: $0) } == "\(reply.count)")
    }

    // MARK: Threads and memory

    @Test("--threads 2: two engine threads wait in epoll, and 200 concurrent short bridges all succeed")
    func twoThreadsManyBridges() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(
            to: server.port,
            ["--engine", "direct", "--threads", "2", "--splice", "never"]
        )
        defer { proxy.kill() }

        let engines = await waitForEngineThreads(of: proxy.pid, count: 2)
        #expect(engines.count == 2, "two engine threads (TP-#0 in epoll_wait): \(engineThreadReport(of: proxy.pid))")
        let switchesBefore = engines.map { voluntarySwitches(of: proxy.pid, thread: $0) }

        let total = 200
        let workers = 4
        let failures = Shared<[String]>([])
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<workers {
                group.addTask {
                    try await onThread {
                        // Each worker opens its share of clients at once, then talks on each, then closes each.
                        let indices = Array(stride(from: worker, to: total, by: workers))
                        var clients: [(Int, TestSocket)] = []
                        for index in indices {
                            do {
                                clients.append((index, try TestSocket.connect(port: proxy.port, timeout: 10)))
                            } catch {
                                failures.update { $0.append("client \(index): connect: \(error)") }
                            }
                        }
                        for (index, client) in clients {
                            let message = bytes(String(format: "bridge %03d", index))
                            do {
                                try client.send(message)
                                let echoed = try client.recvExactly(message.count, timeout: 15)
                                if echoed != message { failures.update { $0.append("client \(index): wrong echo") } }
                            } catch {
                                failures.update { $0.append("client \(index): \(error)") }
                            }
                        }
                        for (index, client) in clients {
                            client.shutdownWrite()
                            let end = try? client.readToEnd(timeout: 15)
                            if end?.end != .eof {
                                failures.update { $0.append("client \(index): ended with \(String(describing: end?.end))") }
                            }
                            client.close()
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(failures.value.isEmpty, "\(failures.value.count) failures: \(failures.value.prefix(10))")
        let closed = await proxy.waitForLines(containing: "bridge closed", count: total, timeout: 15) ?? proxy.closedLines
        #expect(closed.count == total)
        let reasons = Set(closed.compactMap { logValue("close.reason", in: $0) })
        #expect(reasons == ["completed"], "\(reasons)")
        #expect(server.acceptedCount == total)

        // Both engine threads are still there, and back waiting in epoll.
        let after = await waitForEngineThreads(of: proxy.pid, count: 2)
        #expect(Set(after) == Set(engines), "the same engine threads: \(engineThreadReport(of: proxy.pid))")
        let switchesAfter = engines.map { voluntarySwitches(of: proxy.pid, thread: $0) }
        // Each connection wakes one engine (EPOLLEXCLUSIVE): with 200 arriving at once from 4 threads,
        // both engines take some (typically 100-300 wakeups each), so neither may sit idle throughout.
        for (before, after) in zip(switchesBefore, switchesAfter) {
            #expect(after > before, "every engine thread served: wakeups before \(switchesBefore), after \(switchesAfter)")
        }
    }

    @Test("500 idle bridges on the copy path cost less than 2 KiB of resident memory each")
    func idleBridgeMemory() async throws {
        let result = try await Self.idleBridgeGrowth(engine: "direct", bridges: 500)
        print("direct engine: RSS \(result.baseline / 1024) KB -> \(result.after / 1024) KB for 500 idle bridges")
        #expect(result.perBridge < 2048, "\(result.perBridge) bytes of RSS per idle bridge")
    }

    /// Opens `bridges` bridges through a proxy on `engine`, moves a few bytes each way on each, and
    /// returns the proxy's RSS growth while they sit idle.
    static func idleBridgeGrowth(engine: String, bridges: Int) async throws
        -> (baseline: Int, after: Int, perBridge: Int)
    {
        let server = try TestServer()  // accepted by hand: no thread per connection
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--engine", engine])
        defer { proxy.kill() }

        return try await onThread {
            @Sendable func open() throws -> (TestSocket, TestSocket) {
                let client = try TestSocket.connect(port: proxy.port)
                let upstream = try server.accept(timeout: 5)
                try client.send("request!")
                guard try upstream.recvExactly(8, timeout: 5) == bytes("request!") else {
                    throw SocketError.timeout("upstream bytes")
                }
                try upstream.send("response")
                guard try client.recvExactly(8, timeout: 5) == bytes("response") else {
                    throw SocketError.timeout("downstream bytes")
                }
                return (client, upstream)
            }
            // Warm up: the first bridges allocate what every later one reuses (tables, log buffers).
            for _ in 0..<20 {
                let (client, upstream) = try open()
                client.close()
                upstream.close()
            }
            usleep(300_000)
            let baseline = proxy.residentMemoryBytes()
            var idle: [(TestSocket, TestSocket)] = []
            for _ in 0..<bridges { idle.append(try open()) }
            usleep(500_000)
            let after = proxy.residentMemoryBytes()
            for (client, upstream) in idle {
                client.close()
                upstream.close()
            }
            return (baseline, after, (after - baseline) / bridges)
        }
    }
}

// MARK: Helpers

/// A loopback TCP socket bound to a port of its own but not listening: connections to the port are
/// refused, and no other socket can take the port until this one closes. ``startListening()`` makes the
/// same port a live target.
private final class ReservedPort: @unchecked Sendable {
    let socket: TestSocket
    let port: Int

    init() throws {
        let fd = try TestSocket.makeSocket(family: AF_INET)
        self.socket = TestSocket(adopting: fd)
        let bound = try TestSocket.withAddress(host: "127.0.0.1", port: 0) { address, length, _ in bind(fd, address, length) }
        guard bound == 0 else { throw SocketError.system("bind", errno) }
        self.port = self.socket.localPort
    }

    deinit { self.socket.close() }

    func startListening() throws {
        guard listen(self.socket.fd, 16) == 0 else { throw SocketError.system("listen", errno) }
    }

    func accept(timeout: Double) throws -> TestSocket {
        guard try self.socket.poll(events: Int16(POLLIN), timeout: timeout) else {
            throw SocketError.timeout("accept on port \(self.port)")
        }
        let fd = Glibc.accept(self.socket.fd, nil, nil)
        guard fd >= 0 else { throw SocketError.system("accept", errno) }
        return TestSocket(adopting: fd)
    }
}

/// The proxy's threads (task ids) that look like direct engines: a thread-pool thread (`TP-…`, how
/// NIOThreadPool names them) blocked in epoll_wait.
private func engineThreads(of pid: Int32) -> [String] {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
    return tasks.filter { task in
        let name = (try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/comm", encoding: .utf8)) ?? ""
        let wait = (try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/wchan", encoding: .utf8)) ?? ""
        return name.hasPrefix("TP-") && wait.contains("epoll_wait")
    }.sorted()
}

/// Polls (an engine thread is in epoll_wait only while idle) until `count` engine threads are seen.
private func waitForEngineThreads(of pid: Int32, count: Int, timeout: Double = 5) async -> [String] {
    let deadline = now() + timeout
    var threads = engineThreads(of: pid)
    while threads.count < count && now() < deadline {
        await delay(seconds: 0.05)
        threads = engineThreads(of: pid)
    }
    return threads
}

private func engineThreadReport(of pid: Int32) -> String {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
    return tasks.sorted().map { task in
        let name = (try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/comm", encoding: .utf8)) ?? "?"
        let wait = (try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/wchan", encoding: .utf8)) ?? "?"
        return "\(task) \(name.trimmingCharacters(in: .whitespacesAndNewlines)) (\(wait))"
    }.joined(separator: ", ")
}

/// `voluntary_ctxt_switches` of one thread: how often it went to sleep (each engine wakeup is one).
private func voluntarySwitches(of pid: Int32, thread: String) -> Int {
    let status = (try? String(contentsOfFile: "/proc/\(pid)/task/\(thread)/status", encoding: .utf8)) ?? ""
    for line in status.split(separator: "\n") where line.hasPrefix("voluntary_ctxt_switches:") {
        return Int(line.split(separator: "\t").last.map { $0.trimmingCharacters(in: .whitespaces) } ?? "") ?? -1
    }
    return -1
}
