import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `tcpproxy socks` on loopback: real clients (curl) through it to python3's http.server, and raw bytes for
/// every failure reply. After each bad client, a good one still gets through.
@Suite("SOCKS mode", .ownThread)
struct SOCKSTests {
    static let curl = "/usr/bin/curl"
    static var hasCurl: Bool { FileManager.default.isExecutableFile(atPath: curl) }

    // MARK: Helpers

    /// `tcpproxy socks --listen 127.0.0.1:0 EXTRA...`
    static func startProxy(_ extra: [String] = []) async throws -> ProxyProcess {
        try await ProxyProcess.start(["socks", "--listen", "127.0.0.1:0"] + extra)
    }

    /// A directory with `index.txt` and a 1 MiB `big.bin`, served by python3 on 127.0.0.1.
    static func startWebServer() async throws -> (server: RealClientsTests.Child, port: Int, directory: URL, big: Data) {
        let directory = try RealClientsTests.temporaryDirectory()
        let big = Data(pattern(count: megabyte, seed: 404))
        try big.write(to: directory.appendingPathComponent("big.bin"))
        try Data("hello through socks\n".utf8).write(to: directory.appendingPathComponent("index.txt"))
        let (server, port) = try await RealClientsTests.startHTTPServer(directory: directory)
        return (server, port, directory, big)
    }

    /// Runs curl to completion (bounded); returns its exit status and output.
    static func curl(_ arguments: [String]) async throws -> (status: Int32?, output: String) {
        let child = try RealClientsTests.Child(
            Self.curl,
            ["--silent", "--show-error", "--max-time", "10"] + arguments,
            environment: ["PATH": "/usr/bin:/bin"]  // no *_proxy variables from the environment
        )
        defer { child.kill() }
        let status = await child.waitForExit(timeout: 15)
        await child.waitForOutputEnd(timeout: 2)
        return (status, child.text)
    }

    /// SOCKS5 greeting (no auth) plus a CONNECT to `127.0.0.1:port`.
    static func socks5Connect(port: Int, command: UInt8 = 0x01) -> [UInt8] {
        [0x05, 0x01, 0x00, 0x05, command, 0x00, 0x01, 127, 0, 0, 1, UInt8(port >> 8), UInt8(port & 0xFF)]
    }

    /// SOCKS4 CONNECT to `127.0.0.1:port`.
    static func socks4Connect(port: Int, command: UInt8 = 0x01) -> [UInt8] {
        [0x04, command, UInt8(port >> 8), UInt8(port & 0xFF), 127, 0, 0, 1] + bytes("test") + [0x00]
    }

    /// SOCKS5 greeting (no auth) plus a CONNECT to `host:port` by name.
    static func socks5ConnectName(_ host: String, port: Int) -> [UInt8] {
        [0x05, 0x01, 0x00, 0x05, 0x01, 0x00, 0x03, UInt8(host.utf8.count)] + bytes(host) + [UInt8(port >> 8), UInt8(port & 0xFF)]
    }

    /// Sends `request` and expects exactly `reply`, then the end of the stream (a close, not a hang).
    static func expectReplyThenClose(proxyPort: Int, _ request: [UInt8], reply: [UInt8]) async throws {
        let client = try TestSocket.connect(port: proxyPort)
        defer { client.close() }
        try client.send(request)
        let (received, end) = try await onThread { try client.readToEnd(timeout: 5) }
        #expect(received == reply, "got \(received) for \(request)")
        #expect(end == .eof || end == .reset, "then the proxy closes (\(end))")
    }

    /// A good SOCKS5 client: connects through the proxy to the echo server and gets its bytes back.
    static func goodClientWorks(proxyPort: Int, echoPort: Int) async throws {
        let client = try TestSocket.connect(port: proxyPort)
        defer { client.close() }
        try client.send(Self.socks5Connect(port: echoPort) + bytes("ping"))
        let reply = try await onThread { try client.recvExactly(2 + 10 + 4, timeout: 5) }
        #expect(Array(reply[0..<4]) == [0x05, 0x00, 0x05, 0x00], "method selection, then success")
        #expect(Array(reply[12...]) == bytes("ping"), "the data sent with the request came back")
    }

    /// A port on 127.0.0.1 where nothing listens (see ``refusedPort``).
    static func closedPort() throws -> Int {
        refusedPort
    }

    /// The remote port of an accepted socket.
    static func peerPort(_ socket: TestSocket) -> Int {
        var storage = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(socket.fd, $0, &length) }
        }
        return Int(UInt16(bigEndian: storage.sin_port))
    }

    // MARK: Real clients

    @Test(
        "curl --socks4, --socks4a, --socks5 and --socks5-hostname fetch pages byte for byte",
        .enabled(if: hasCurl, "curl is not installed"),
        .serialized,
        arguments: DataPath.nioPaths
    )
    func curlModes(path: DataPath) async throws {
        let web = try await Self.startWebServer()
        defer { web.server.kill(); try? FileManager.default.removeItem(at: web.directory) }
        let proxy = try await Self.startProxy(path.arguments)
        defer { proxy.kill() }

        for mode in ["--socks4", "--socks4a", "--socks5", "--socks5-hostname"] {
            let proxyAddress = "127.0.0.1:\(proxy.port)"
            let small = try await Self.curl([mode, proxyAddress, "http://localhost:\(web.port)/index.txt"])
            #expect(small.status == 0, "\(mode): \(small.output)")
            #expect(small.output == "hello through socks\n", "\(mode)")
            let file = web.directory.appendingPathComponent("out\(mode).bin")
            let big = try await Self.curl([mode, proxyAddress, "-o", file.path, "http://localhost:\(web.port)/big.bin"])
            #expect(big.status == 0, "\(mode): \(big.output)")
            #expect((try? Data(contentsOf: file)) == web.big, "\(mode): 1 MiB intact")
        }
        // curl may exit before the proxy has read the server's EOF and logged the last close.
        let closed = await proxy.waitForLines(containing: "bridge closed", count: 8, timeout: 5)
        #expect(closed?.count == 8, "\(proxy.closedLines)")
        #expect(proxy.closedLines.allSatisfy { logValue("close.reason", in: $0) == "completed" }, "\(proxy.closedLines)")
    }

    @Test("--users: curl logs in with --proxy-user or socks5h://u:p@; a wrong password is refused, a good login still works", .enabled(if: hasCurl, "curl is not installed"))
    func curlWithUsers() async throws {
        let web = try await Self.startWebServer()
        defer { web.server.kill(); try? FileManager.default.removeItem(at: web.directory) }
        let users = web.directory.appendingPathComponent("users.txt")
        try "# who may use the proxy\nalice:s3cret\nbob:pa:ss\n".write(to: users, atomically: true, encoding: .utf8)
        let proxy = try await Self.startProxy(["--users", users.path])
        defer { proxy.kill() }
        let page = "http://localhost:\(web.port)/index.txt"

        let alice = try await Self.curl(["--socks5-hostname", "127.0.0.1:\(proxy.port)", "--proxy-user", "alice:s3cret", page])
        #expect(alice.status == 0 && alice.output == "hello through socks\n", "\(alice)")
        let bob = try await Self.curl(["-x", "socks5h://bob:pa%3Ass@127.0.0.1:\(proxy.port)", page])
        #expect(bob.status == 0 && bob.output == "hello through socks\n", "\(bob)")

        let wrong = try await Self.curl(["-x", "socks5://alice:nope@127.0.0.1:\(proxy.port)", page])
        #expect(wrong.status == 97, "curl: proxy handshake error (\(wrong))")
        let anonymous = try await Self.curl(["--socks5", "127.0.0.1:\(proxy.port)", page])
        #expect(anonymous.status == 97, "no credentials, no entry (\(anonymous))")
        let socks4 = try await Self.curl(["--socks4a", "127.0.0.1:\(proxy.port)", page])
        #expect(socks4.status != 0, "SOCKS4 cannot log in (\(socks4))")

        let again = try await Self.curl(["--socks5-hostname", "127.0.0.1:\(proxy.port)", "--proxy-user", "alice:s3cret", page])
        #expect(again.status == 0 && again.output == "hello through socks\n", "\(again)")
        // The client may see its reply and the close before the proxy has logged it.
        #expect(await proxy.waitForLines(containing: "socks handshake failed", count: 3, timeout: 5)?.count == 3, "\(proxy.stderr)")
        #expect(!proxy.stderr.contains("nope") && !proxy.stderr.contains("s3cret"), "no password in the log")
    }

    static let proxychains = "/usr/bin/proxychains4"

    @Test(
        "proxychains4 (socks5 and socks4, names resolved by the proxy) runs curl through it",
        .enabled(if: hasCurl && FileManager.default.isExecutableFile(atPath: proxychains), "curl or proxychains4 is not installed")
    )
    func proxychainsClient() async throws {
        let web = try await Self.startWebServer()
        defer { web.server.kill(); try? FileManager.default.removeItem(at: web.directory) }
        let proxy = try await Self.startProxy()
        defer { proxy.kill() }
        for type in ["socks5", "socks4"] {
            let configuration = web.directory.appendingPathComponent("proxychains-\(type).conf")
            try "strict_chain\nproxy_dns\nquiet_mode\n[ProxyList]\n\(type) 127.0.0.1 \(proxy.port)\n"
                .write(to: configuration, atomically: true, encoding: .utf8)
            let child = try RealClientsTests.Child(
                Self.proxychains,
                ["-q", "-f", configuration.path, Self.curl, "--silent", "--show-error", "--max-time", "10",
                 "http://localhost:\(web.port)/index.txt"],
                environment: ["PATH": "/usr/bin:/bin"]
            )
            defer { child.kill() }
            let status = await child.waitForExit(timeout: 15)
            await child.waitForOutputEnd(timeout: 2)
            #expect(status == 0, "\(type): \(child.text)")
            #expect(child.text.contains("hello through socks"), "\(type): \(child.text)")
        }
        // curl may exit before the proxy has seen both sides close and logged it.
        #expect(await proxy.waitForLines(containing: "bridge closed", count: 2, timeout: 5) != nil, "\(proxy.stderr)")
        #expect(proxy.lines(containing: "socks.destination").isEmpty, "debug lines are off at info level")
    }

    // MARK: Raw bytes: success

    @Test(
        "the success reply carries the real bound address of the server-side socket; data follows it both ways",
        .serialized,
        arguments: DataPath.nioPaths
    )
    func boundAddress(path: DataPath) async throws {
        let server = try TestServer()
        defer { server.stop() }
        let proxy = try await Self.startProxy(path.arguments)
        defer { proxy.kill() }
        let client = try TestSocket.connect(port: proxy.port)
        defer { client.close() }
        try client.send(Self.socks4Connect(port: server.port))
        let accepted = try server.accept(timeout: 5)
        defer { accepted.close() }
        let reply = try await onThread { try client.recvExactly(8, timeout: 5) }
        #expect(Array(reply[0..<2]) == [0x00, 0x5A])
        #expect(Int(reply[2]) << 8 | Int(reply[3]) == Self.peerPort(accepted), "DSTPORT is the proxy's source port")
        #expect(Array(reply[4..<8]) == [127, 0, 0, 1])
        try accepted.send(bytes("banner"))
        #expect(try await onThread { try client.recvExactly(6, timeout: 5) } == bytes("banner"))
        try client.send(bytes("up"))
        #expect(try await onThread { try accepted.recvExactly(2, timeout: 5) } == bytes("up"))
    }

    @Test(
        "a server that speaks first: its bytes arrive after the reply, then its EOF",
        .serialized,
        arguments: DataPath.nioPaths
    )
    func serverSpeaksFirst(path: DataPath) async throws {
        let banner = pattern(count: 100_000, seed: 9)
        let server = try TestServer(handler: TestServer.sendThenClose(banner))
        defer { server.stop() }
        let proxy = try await Self.startProxy(path.arguments)
        defer { proxy.kill() }
        let client = try TestSocket.connect(port: proxy.port)
        defer { client.close() }
        try client.send(Self.socks5Connect(port: server.port))
        let (received, end) = try await onThread { try client.readToEnd(timeout: 10) }
        #expect(received.count == 12 + banner.count)
        #expect(Array(received.prefix(4)) == [0x05, 0x00, 0x05, 0x00])
        #expect(sameBytes(Array(received.dropFirst(12)), banner))
        #expect(end == .eof)
    }

    @Test("SOCKS5 CONNECT to an IPv6 address", .enabled(if: ipv6LoopbackAvailable, "no IPv6 loopback"))
    func ipv6() async throws {
        let server = try TestServer(host: "::1", handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await Self.startProxy()
        defer { proxy.kill() }
        let client = try TestSocket.connect(port: proxy.port)
        defer { client.close() }
        let request: [UInt8] = [0x05, 0x01, 0x00, 0x05, 0x01, 0x00, 0x04] + [UInt8](repeating: 0, count: 15) + [1]
            + [UInt8(server.port >> 8), UInt8(server.port & 0xFF)]
        try client.send(request + bytes("six"))
        let reply = try await onThread { try client.recvExactly(2 + 22 + 3, timeout: 5) }
        #expect(Array(reply[0..<6]) == [0x05, 0x00, 0x05, 0x00, 0x00, 0x04], "bound address is IPv6 (ATYP 4)")
        #expect(Array(reply.suffix(3)) == bytes("six"))
    }

    // MARK: Raw bytes: every failure reply, each followed by a good client

    @Test("connection refused: SOCKS5 0x05, SOCKS4 0x5B")
    func refused() async throws {
        let echo = try TestServer(handler: TestServer.echo)
        defer { echo.stop() }
        let proxy = try await Self.startProxy()
        defer { proxy.kill() }
        let closed = try Self.closedPort()
        try await Self.expectReplyThenClose(
            proxyPort: proxy.port, Self.socks5Connect(port: closed), reply: [0x05, 0x00, 0x05, 0x05, 0x00, 0x01, 0, 0, 0, 0, 0, 0])
        try await Self.goodClientWorks(proxyPort: proxy.port, echoPort: echo.port)
        try await Self.expectReplyThenClose(proxyPort: proxy.port, Self.socks4Connect(port: closed), reply: [0x00, 0x5B, 0, 0, 0, 0, 0, 0])
        try await Self.goodClientWorks(proxyPort: proxy.port, echoPort: echo.port)
        // The client may see its reply and the close before the proxy has logged it.
        #expect(await proxy.waitForLines(containing: "close.reason=connectFailed", count: 2, timeout: 5)?.count == 2, "\(proxy.stderr)")
    }

    @Test("--deny-destination: an address gets 0x02, and so does a name that resolves into the network; nothing reaches the server")
    func denied() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await Self.startProxy(["--deny-destination", "127.0.0.0/8", "--deny-destination", "::1"])
        defer { proxy.kill() }
        let deniedReply: [UInt8] = [0x05, 0x00, 0x05, 0x02, 0x00, 0x01, 0, 0, 0, 0, 0, 0]
        try await Self.expectReplyThenClose(proxyPort: proxy.port, Self.socks5Connect(port: server.port), reply: deniedReply)
        try await Self.expectReplyThenClose(
            proxyPort: proxy.port, Self.socks5ConnectName("localhost", port: server.port), reply: deniedReply)
        try await Self.expectReplyThenClose(
            proxyPort: proxy.port, Self.socks5ConnectName("127.0.0.1", port: server.port), reply: deniedReply)
        let socks4a: [UInt8] = [0x04, 0x01, UInt8(server.port >> 8), UInt8(server.port & 0xFF), 0, 0, 0, 1, 0x00] + bytes("localhost") + [0x00]
        try await Self.expectReplyThenClose(proxyPort: proxy.port, socks4a, reply: [0x00, 0x5B, 0, 0, 0, 0, 0, 0])
        try await Self.expectReplyThenClose(proxyPort: proxy.port, Self.socks5Connect(port: 0).prefix(7) + [0, 0, 0, 0, 0, 80], reply: deniedReply)
        await delay(seconds: 0.2)
        #expect(server.acceptedCount == 0, "no connection reached the denied network")
    }

    @Test("--deny-destination 127.0.0.0/8 keeps curl --socks5-hostname away from localhost", .enabled(if: hasCurl, "curl is not installed"))
    func deniedByNameWithCurl() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await Self.startProxy(["--deny-destination", "127.0.0.0/8"])
        defer { proxy.kill() }
        let result = try await Self.curl(["--socks5-hostname", "127.0.0.1:\(proxy.port)", "http://localhost:\(server.port)/"])
        #expect(result.status == 97, "\(result)")
        await delay(seconds: 0.2)
        #expect(server.acceptedCount == 0, "localhost is 127.0.0.1 (and ::1, where nothing listens)")
    }

    @Test("BIND and UDP ASSOCIATE: SOCKS5 0x07, SOCKS4 BIND 0x5B; a bad address type: 0x08")
    func unsupported() async throws {
        let echo = try TestServer(handler: TestServer.echo)
        defer { echo.stop() }
        let proxy = try await Self.startProxy()
        defer { proxy.kill() }
        let notSupported: [UInt8] = [0x05, 0x00, 0x05, 0x07, 0x00, 0x01, 0, 0, 0, 0, 0, 0]
        try await Self.expectReplyThenClose(proxyPort: proxy.port, Self.socks5Connect(port: echo.port, command: 0x02), reply: notSupported)
        try await Self.goodClientWorks(proxyPort: proxy.port, echoPort: echo.port)
        try await Self.expectReplyThenClose(proxyPort: proxy.port, Self.socks5Connect(port: echo.port, command: 0x03), reply: notSupported)
        try await Self.goodClientWorks(proxyPort: proxy.port, echoPort: echo.port)
        try await Self.expectReplyThenClose(
            proxyPort: proxy.port, Self.socks4Connect(port: echo.port, command: 0x02), reply: [0x00, 0x5B, 0, 0, 0, 0, 0, 0])
        try await Self.goodClientWorks(proxyPort: proxy.port, echoPort: echo.port)
        try await Self.expectReplyThenClose(
            proxyPort: proxy.port, [0x05, 0x01, 0x00, 0x05, 0x01, 0x00, 0x09, 1, 2, 3, 4, 0, 80],
            reply: [0x05, 0x00, 0x05, 0x08, 0x00, 0x01, 0, 0, 0, 0, 0, 0])
        try await Self.goodClientWorks(proxyPort: proxy.port, echoPort: echo.port)
        #expect(echo.acceptedCount == 4, "only the good clients reached the server")
    }

    @Test("garbage, a wrong version, zero methods and an endless SOCKS4 user id: the right reply or none, then a close")
    func garbage() async throws {
        let echo = try TestServer(handler: TestServer.echo)
        defer { echo.stop() }
        let proxy = try await Self.startProxy()
        defer { proxy.kill() }
        try await Self.expectReplyThenClose(proxyPort: proxy.port, bytes("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), reply: [])
        try await Self.goodClientWorks(proxyPort: proxy.port, echoPort: echo.port)
        try await Self.expectReplyThenClose(proxyPort: proxy.port, [0x06, 0x01, 0x00], reply: [])
        try await Self.goodClientWorks(proxyPort: proxy.port, echoPort: echo.port)
        try await Self.expectReplyThenClose(proxyPort: proxy.port, [0x05, 0x00], reply: [0x05, 0xFF])
        try await Self.goodClientWorks(proxyPort: proxy.port, echoPort: echo.port)

        // A user id that never ends: rejected once it passes 255 bytes, however much more follows.
        let client = try TestSocket.connect(port: proxy.port)
        defer { client.close() }
        try client.send([0x04, 0x01, 0x00, 0x50, 127, 0, 0, 1] + [UInt8](repeating: 0x41, count: 4096))
        let reply = try await onThread { try client.recvExactly(8, timeout: 5) }
        #expect(reply == [0x00, 0x5B, 0, 0, 0, 0, 0, 0])
        let (count, end) = await client.waitForEnd(timeout: 5)
        #expect(count == 0 && (end == .eof || end == .reset), "\(end)")
        try await Self.goodClientWorks(proxyPort: proxy.port, echoPort: echo.port)
        #expect(echo.acceptedCount == 4)
    }

    @Test("a client that resets mid-handshake is logged in one plain line (clientReset, connection reset by peer)")
    func resetMidHandshake() async throws {
        let proxy = try await Self.startProxy([])
        defer { proxy.kill() }
        let client = try TestSocket.connect(port: proxy.port)
        try client.send([0x05, 0x01])
        await delay(seconds: 0.2)
        client.resetClose()
        let line = try #require(await proxy.waitForLine(containing: "socks handshake failed", timeout: 5))
        #expect(logValue("close.reason", in: line) == "clientReset", "\(line)")
        #expect(line.contains("error=\"connection reset by peer\""), "the errno text, not NIO's call: \(line)")
    }

    @Test("a handshake that does not complete within --handshake-timeout is closed; a good client still works")
    func handshakeTimeout() async throws {
        let echo = try TestServer(handler: TestServer.echo)
        defer { echo.stop() }
        let proxy = try await Self.startProxy(["--handshake-timeout", "0.5"])
        defer { proxy.kill() }
        let silent = try TestSocket.connect(port: proxy.port)
        defer { silent.close() }
        let partial = try TestSocket.connect(port: proxy.port)
        defer { partial.close() }
        try partial.send([0x05, 0x02, 0x00])
        let started = now()
        async let silentEnd = silent.waitForEnd(timeout: 10)
        async let partialEnd = partial.waitForEnd(timeout: 10)
        let ends = await [silentEnd, partialEnd]
        let elapsed = now() - started
        #expect(ends.allSatisfy { $0.count == 0 && ($0.end == .eof || $0.end == .reset) }, "\(ends)")
        #expect(elapsed >= 0.4 && elapsed < 8, "closed after about 0.5 s (\(elapsed); a loaded machine may take longer)")
        try await Self.goodClientWorks(proxyPort: proxy.port, echoPort: echo.port)
        #expect(await proxy.waitForLines(containing: "handshake timed out", count: 2, timeout: 2)?.count == 2)
    }

    @Test("SIGTERM: a client mid-handshake and a request whose connect is pending end within --drain-timeout, and the process exits")
    func drainEndsHandshakesAndConnects() async throws {
        let (server, filler) = try TestServer.withFullQueue()  // connects to it get no answer
        defer { filler.close(); server.stop() }
        let proxy = try await Self.startProxy(["--drain-timeout", "2", "--handshake-timeout", "60", "--connect-timeout", "60"])
        defer { proxy.kill() }
        let greeted = try TestSocket.connect(port: proxy.port)
        defer { greeted.close() }
        try greeted.send([0x05, 0x01, 0x00])
        #expect(try greeted.recvExactly(2, timeout: 5) == [0x05, 0x00])
        let pending = try TestSocket.connect(port: proxy.port)
        defer { pending.close() }
        try pending.send(Self.socks5Connect(port: server.port))
        #expect(try pending.recvExactly(2, timeout: 5) == [0x05, 0x00])
        #expect(await proxy.waitForLine(containing: "bridge accepted", timeout: 3) != nil, "\(proxy.stderr)")

        let started = now()
        proxy.terminate()
        #expect(await proxy.waitForLine(containing: "draining", timeout: 3) != nil, "\(proxy.stderr)")
        // "draining" is logged just before the channels are told; give them a moment to hear it.
        await delay(seconds: 0.5)
        // The greeted client may still ask: it is refused (general failure), as the proxy opens no new connections.
        try greeted.send([0x05, 0x01, 0x00, 0x01, 127, 0, 0, 1, 0, 80])
        let refused = try await onThread { try greeted.readToEnd(timeout: 5) }
        #expect(Array(refused.bytes.prefix(2)) == [0x05, 0x01], "\(refused)")
        // The request whose connect the drain gave up hears why (general failure), then a FIN: no bare reset.
        let abandoned = try await onThread { try pending.readToEnd(timeout: 10) }
        #expect(Array(abandoned.bytes.prefix(2)) == [0x05, 0x01] && abandoned.end == .eof, "\(abandoned)")
        let status = await proxy.waitForExit(timeout: 10)
        #expect(status == 0)
        #expect(now() - started < 6, "exits about when the 2 s drain ends, not when the connect would time out")
        #expect(proxy.lines(containing: "bridge connect failed").isEmpty, "a connect given up is no failure: \(proxy.stderr)")
    }

    @Test("--metrics counts SOCKS handshakes by version, replies by code and authentication failures", .enabled(if: hasCurl, "curl is not installed"))
    func metrics() async throws {
        let echo = try TestServer(handler: TestServer.echo)
        defer { echo.stop() }
        let directory = try RealClientsTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let users = directory.appendingPathComponent("users.txt")
        try "u:p\n".write(to: users, atomically: true, encoding: .utf8)
        let proxy = try await Self.startProxy(["--users", users.path, "--metrics", "127.0.0.1:0"])
        defer { proxy.kill() }
        let line = try #require(await proxy.waitForLine(containing: "metrics served at", timeout: 5))
        let address = line.components(separatedBy: "metrics served at ")[1].prefix { $0 != " " && $0 != "\"" }

        let login: [UInt8] = [0x05, 0x01, 0x02, 0x01, 0x01, 0x75, 0x01, 0x70]
        let good = try TestSocket.connect(port: proxy.port)
        try good.send(login + Array(Self.socks5Connect(port: echo.port).dropFirst(3)))
        #expect(try await onThread { try good.recvExactly(2 + 2 + 10, timeout: 5) }[3] == 0x00)
        good.close()
        try await Self.expectReplyThenClose(proxyPort: proxy.port, [0x05, 0x01, 0x02, 0x01, 0x01, 0x75, 0x01, 0x78], reply: [0x05, 0x02, 0x01, 0x01])
        try await Self.expectReplyThenClose(proxyPort: proxy.port, Self.socks4Connect(port: echo.port), reply: [0x00, 0x5B, 0, 0, 0, 0, 0, 0])
        _ = await proxy.waitForLines(containing: "bridge closed", count: 1, timeout: 5)

        let text = try await Self.curl(["http://\(address)/metrics"]).output
        func value(_ name: String, _ label: String) -> Double? {
            text.split(separator: "\n").first { $0.hasPrefix(name) && $0.contains(label) }.flatMap { Double($0.split(separator: " ").last!) }
        }
        #expect(value("tcpproxy_socks_handshakes_total", "version=\"5\"") == 1, "\(text)")
        #expect(value("tcpproxy_socks_handshakes_total", "version=\"4\"") == 1)
        #expect(value("tcpproxy_socks_replies_total", "code=\"0x00\"") == 1)
        #expect(value("tcpproxy_socks_replies_total", "code=\"0x5b\"") == 1)
        #expect(value("tcpproxy_socks_auth_failures_total", "target=\"socks\"") == 2)
        #expect(value("tcpproxy_connections_accepted_total", "target=\"socks\"") == 3)
    }

    // MARK: Command line

    @Test("a users file that cannot be read or parsed stops tcpproxy with exit 1, naming the line; bad options exit 64")
    func commandLine() async throws {
        let directory = try RealClientsTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let bad = directory.appendingPathComponent("bad.txt")
        try "alice:ok\nno-colon-here\n".write(to: bad, atomically: true, encoding: .utf8)
        let parsed = try await ProxyProcess.runToExit(["socks", "--listen", "127.0.0.1:0", "--users", bad.path])
        #expect(parsed.status == 1)
        #expect(parsed.stderr.contains("line 2: expected user:password"), "\(parsed.stderr)")
        let missing = try await ProxyProcess.runToExit(["socks", "--listen", "127.0.0.1:0", "--users", "/nonexistent/users.txt"])
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("no such file or directory"), "\(missing.stderr)")
        let timeout = try await ProxyProcess.runToExit(["socks", "--listen", "127.0.0.1:0", "--handshake-timeout", "0"])
        #expect(timeout.status == 64)
        let network = try await ProxyProcess.runToExit(["socks", "--listen", "127.0.0.1:0", "--deny-destination", "10.0.0/8"])
        #expect(network.status == 64)
        #expect(network.stderr.contains("invalid network '10.0.0/8'"), "\(network.stderr)")
    }

    @Test("a loopback listener logs no open-proxy warning")
    func noWarningOnLoopback() async throws {
        let proxy = try await Self.startProxy()
        defer { proxy.kill() }
        #expect(proxy.lines(containing: "open socks proxy").isEmpty)
        #expect(proxy.lines(containing: "mode=socks").count == 1)
    }
}
