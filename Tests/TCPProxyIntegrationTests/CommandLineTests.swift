import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// SPEC §1: exit statuses, the seed command lines, addresses, signals, log formats.
@Suite("Command line, signals and logs", .ownThread)
struct CommandLineTests {
    static let usageErrors: [[String]] = [
        ["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--no-such-option"],
        ["forward", "--listen", "127.0.0.1:99999", "--target", "127.0.0.1:9"],
        ["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:notaport"],
        ["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--high-water-mark", "12Q"],
        ["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--stall-timeout", "-1"],
        ["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--splice", "sometimes"],
        ["forward", "--listen", "127.0.0.1:0"],
        ["forward", "--listen", "nocolon", "--target", "127.0.0.1:9"],
        ["127.0.0.1", "9"],
        ["127.0.0.1", "0", "127.0.0.1", "9", "extra"],
        ["127.0.0.1", "9", "70000"],
        ["--no-such-option"],
        // Port 0 is for listening; an empty host names nothing.
        ["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:0"],
        ["demux", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:0"],
        ["mux", "--listen", "127.0.0.1:0", "--tunnel", "127.0.0.1:0"],
        ["127.0.0.1", "0", "127.0.0.1", "0"],
        ["127.0.0.1", "0", "", "9"],
        ["", "0", "127.0.0.1", "9"],
        ["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--log-level", "loud"],
        ["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--connect-timeout", "0"],
        // A target that is the listener itself would loop every client back in until descriptors run out.
        ["forward", "--listen", ":20341", "--target", "127.0.0.1:20341"],
        ["127.0.0.1", "20341", "127.0.0.1", "20341"],
        // The same spelled as a name, an IPv4-mapped address or a short form: each resolves to the listener.
        ["forward", "--listen", "127.0.0.1:20341", "--target", "localhost:20341"],
        ["forward", "--listen", "127.0.0.1:20341", "--target", "[::ffff:127.0.0.1]:20341"],
        ["forward", "--listen", "127.0.0.1:20341", "--target", "127.1:20341"],
        ["forward", "--listen", "[::]:20341", "--target", "127.0.0.1:9", "--target", "[::ffff:127.0.0.1]:20341"],
        ["mux", "--listen", "127.0.0.1:20341", "--tunnel", "localhost:20341"],
        ["demux", "--listen", ":20341", "--target", "127.0.0.1:20341"],
        // An option that takes one value, given twice: the parser would keep the last without a word.
        ["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--listen", "127.0.0.1:0"],
        ["socks", "--listen", "127.0.0.1:0", "--stall-timeout", "1", "--stall-timeout=2"],
        ["127.0.0.1", "0", "127.0.0.1", "9", "--threads", "1", "--threads", "2"],
    ]

    @Test("Usage errors exit 64 with one Error: line, the usage, and no stack trace", arguments: usageErrors)
    func usageError(arguments: [String]) async throws {
        let result = try await ProxyProcess.runToExit(arguments, timeout: 10)
        #expect(result.status == 64, "status \(String(describing: result.status)); stderr:\n\(result.stderr)")
        let errorLines = result.stderr.split(separator: "\n").filter { $0.contains("Error:") }
        #expect(errorLines.count == 1, "one Error: line; stderr:\n\(result.stderr)")
        #expect(result.stderr.lowercased().contains("usage"), "the usage is shown; stderr:\n\(result.stderr)")
        for marker in ["Fatal error", "Stack dump", "backtrace", "Current stack trace", "Thread 0", "0x0000"] {
            #expect(!result.stderr.contains(marker), "no crash text (\(marker)); stderr:\n\(result.stderr)")
        }
        #expect(!result.stderr.contains("listening on"))
    }

    @Test("--metrics on an address in use: exit 1 before any listener says it is ready, and the line says it was the metrics address")
    func metricsAddressInUse() async throws {
        let occupier = try TestServer()
        defer { occupier.stop() }
        let result = try await ProxyProcess.runToExit(
            ["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--metrics", "127.0.0.1:\(occupier.port)"], timeout: 10)
        #expect(result.status == 1, "status \(String(describing: result.status)); stderr:\n\(result.stderr)")
        #expect(result.stderr.contains("cannot listen on 127.0.0.1:\(occupier.port) (--metrics): address already in use"), "\(result.stderr)")
        #expect(!result.stderr.contains("listening on"), "no listener said it was ready: \(result.stderr)")
    }

    @Test("Listen address in use: exit 1 and stderr says address already in use, naming the address")
    func addressInUse() async throws {
        let occupier = try TestServer()
        defer { occupier.stop() }
        let result = try await ProxyProcess.runToExit(
            ["forward", "--listen", "127.0.0.1:\(occupier.port)", "--target", "127.0.0.1:9"], timeout: 10)
        #expect(result.status == 1, "status \(String(describing: result.status)); stderr:\n\(result.stderr)")
        #expect(result.stderr.contains("address already in use"), "stderr:\n\(result.stderr)")
        #expect(result.stderr.contains("\(occupier.port)"), "names the address; stderr:\n\(result.stderr)")
        #expect(!result.stderr.contains("Fatal error"))
    }

    @Test(
        "Listen on a privileged port without privilege: exit 1 and stderr says permission denied",
        .enabled(
            if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv"),
            "needs root and util-linux setpriv to run tcpproxy as an unprivileged user"
        )
    )
    func permissionDenied() async throws {
        // Dropped to nobody (uid 65534), binding port 81 fails with EACCES.
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        process.arguments = [
            "--reuid=65534", "--regid=65534", "--clear-groups", try ProxyProcess.binaryURL().path,
            "forward", "--listen", "127.0.0.1:81", "--target", "127.0.0.1:9",
        ]
        let stderr = Pipe()
        process.standardError = stderr
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let output = try await onThread { stderr.fileHandleForReading.readDataToEndOfFile() }
        let deadline = now() + 10
        while process.isRunning && now() < deadline { await delay(seconds: 0.05) }
        if process.isRunning { process.terminate() }
        let text = String(decoding: output, as: UTF8.self)
        #expect(process.terminationStatus == 1, "stderr: \(text)")
        #expect(text.contains("cannot listen on 127.0.0.1:81: permission denied"), "stderr: \(text)")
    }

    @Test("Seed form 1: tcpproxy LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT forwards")
    func seedFormFourArguments() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.start(["127.0.0.1", "0", "127.0.0.1", "\(server.port)"])
        defer { proxy.kill() }
        #expect(proxy.listenHost == "127.0.0.1")
        try Self.expectEcho(port: proxy.port)
    }

    @Test("Seed form 2: tcpproxy TARGET_HOST TARGET_PORT LISTEN_PORT listens on all interfaces and forwards")
    func seedFormThreeArguments() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.start(["127.0.0.1", "\(server.port)", "0"])
        defer { proxy.kill() }
        #expect(proxy.listenHost == "0.0.0.0" || proxy.listenHost == "[::]", "listening on \(proxy.listenHost)")
        try Self.expectEcho(port: proxy.port)
    }

    @Test("--allow with host bits set warns with the network it matches, and admits clients inside it (both engines)", arguments: ["direct", "nio"])
    func allowWithHostBits(engine: String) async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.start([
            "forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:\(server.port)", "--engine", engine, "--allow", "127.0.0.1/8",
        ])
        defer { proxy.kill() }
        let warning = await proxy.waitForLine(containing: "warning --allow 127.0.0.1/8 has host bits set: it matches 127.0.0.0/8", timeout: 5)
        #expect(warning != nil, "log:\n\(proxy.stderr)")
        try Self.expectEcho(port: proxy.port)
    }

    @Test(
        "Every mode warns of a network written with host bits set, naming the network it matches",
        arguments: [
            (["socks", "--listen", "127.0.0.1:0", "--allow", "127.0.0.1/8"], "--allow 127.0.0.1/8 has host bits set: it matches 127.0.0.0/8"),
            (["socks", "--listen", "127.0.0.1:0", "--deny-destination", "10.1.1.1/8"], "--deny-destination 10.1.1.1/8 has host bits set: it matches 10.0.0.0/8"),
            (["demux", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--allow", "::1/64"], "--allow ::1/64 has host bits set: it matches ::/64"),
            (["mux", "--listen", "127.0.0.1:0", "--tunnel", "127.0.0.1:9", "--allow", "127.0.0.1/8"], "--allow 127.0.0.1/8 has host bits set: it matches 127.0.0.0/8"),
            (
                ["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--accept-proxy-protocol", "--trusted-proxy", "127.0.0.1/8"],
                "--trusted-proxy 127.0.0.1/8 has host bits set: it matches 127.0.0.0/8"
            ),
        ] as [([String], String)]
    )
    func hostBitWarnings(arguments: [String], warning: String) async throws {
        let proxy = try ProxyProcess(arguments: arguments)
        defer { proxy.kill() }
        #expect(await proxy.waitForLine(containing: "warning \(warning)", timeout: 10) != nil, "log:\n\(proxy.stderr)")
    }

    @Test("--listen :0 (port only) listens on all interfaces and forwards")
    func listenPortOnly() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.start(["forward", "--listen", ":0", "--target", "127.0.0.1:\(server.port)"])
        defer { proxy.kill() }
        #expect(["0.0.0.0", "[::]", "*"].contains(proxy.listenHost), "listening on \(proxy.listenHost)")
        try Self.expectEcho(port: proxy.port)
    }

    @Test(
        "Above info, the ready lines still show: `listening on` and `metrics served at` carry the configured level and the bound ports",
        arguments: [["--log-level", "warning"], ["--log-level", "critical", "--engine", "nio"]]
    )
    func readyLineAtEveryLevel(options: [String]) async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try ProxyProcess(
            arguments: ["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:\(server.port)", "--metrics", "127.0.0.1:0"]
                + options
        )
        defer { proxy.kill() }
        let level = options[1]
        let line = try #require(await proxy.waitForLine(containing: "\(level) listening on 127.0.0.1:", timeout: 10), "log:\n\(proxy.stderr)")
        let port = try #require(Int(line.components(separatedBy: "listening on 127.0.0.1:")[1].prefix { $0.isNumber }))
        try Self.expectEcho(port: port)
        let metricsLine = try #require(await proxy.waitForLine(containing: "\(level) metrics served at 127.0.0.1:", timeout: 5))
        let metricsPort = try #require(Int(metricsLine.components(separatedBy: "served at 127.0.0.1:")[1].prefix { $0.isNumber }))
        #expect(metricsPort != port)
        #expect(proxy.lines(containing: "listening on").count == 1, "one listener line; log:\n\(proxy.stderr)")
        #expect(proxy.lines(containing: "bridge ").isEmpty, "info lines stay hidden; log:\n\(proxy.stderr)")
    }

    @Test("--help and --version exit 0 and print to stdout")
    func helpAndVersion() async throws {
        let help = try await ProxyProcess.runToExit(["--help"], timeout: 10)
        #expect(help.status == 0)
        #expect(help.stdout.contains("forward"), "help lists the forward mode:\n\(help.stdout)")
        let forwardHelp = try await ProxyProcess.runToExit(["forward", "--help"], timeout: 10)
        #expect(forwardHelp.status == 0)
        #expect(forwardHelp.stdout.contains("--high-water-mark"))
        let version = try await ProxyProcess.runToExit(["--version"], timeout: 10)
        #expect(version.status == 0)
        #expect(!version.stdout.isEmpty)
    }

    @Test(
        "A size or number that is zero, negative or out of range says what would do",
        arguments: [
            (["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--high-water-mark", "0"],
             "invalid size '0' for --high-water-mark (must be more than 0; use 512 to 1G, e.g. 64K or 10M)"),
            (["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--high-water-mark", "12Q"],
             "invalid size '12Q' for --high-water-mark (use 512 to 1G, e.g. 64K or 10M)"),
            // The direct engine reads into a buffer of this size per thread: 100G aborted it.
            (["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--high-water-mark", "100G"],
             "invalid size '100G' for --high-water-mark (use 512 to 1G, e.g. 64K or 10M)"),
            (["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--high-water-mark", "511"],
             "invalid size '511' for --high-water-mark (use 512 to 1G"),
            (["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--target", "127.0.0.1:10", "--health-interval", "0.001"],
             "invalid value '0.001' for --health-interval (use seconds from 0.1 to 3600)"),
            (["mux", "--listen", "127.0.0.1:0", "--tunnel", "127.0.0.1:9", "--window", "0K"],
             "invalid size '0K' for --window (must be more than 0; use 16K to 1G)"),
            (["mux", "--listen", "127.0.0.1:0", "--tunnel", "127.0.0.1:9", "--window", "1"], "invalid size '1' for --window (use 16K to 1G)"),
            // A negative number is a value, not an option: it gets the option's own range.
            (["socks", "--listen", "127.0.0.1:0", "--handshake-timeout", "-1"], "invalid value '-1' for --handshake-timeout"),
            // Seconds and probabilities are plain decimals, quoted as given: not hex, exponents, inf or nan.
            (["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--drain-timeout", "0x10"],
             "invalid value '0x10' for --drain-timeout (use seconds from 0 up to 31536000, one year)"),
            (["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--connect-timeout", "1e400"],
             "invalid value '1e400' for --connect-timeout (use seconds from more than 0 up to 31536000, one year)"),
            (["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--stall-timeout", "nan"],
             "invalid value 'nan' for --stall-timeout"),
            (["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--idle-timeout", "99999999999"],
             "invalid value '99999999999' for --idle-timeout"),
            (["mux", "--listen", "127.0.0.1:0", "--tunnel", "127.0.0.1:9", "--ping-interval", "1.5.0"],
             "invalid value '1.5.0' for --ping-interval (use seconds from more than 0 to 3600)"),
            (["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--corrupt", "0x0.8"],
             "invalid probability '0x0.8' for --corrupt (use a number from 0 to 1)"),
            (["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--threads", "-2"], "invalid value '-2' for --threads"),
        ] as [([String], String)]
    )
    func sizeMessages(arguments: [String], message: String) async throws {
        let result = try await ProxyProcess.runToExit(arguments, timeout: 10)
        #expect(result.status == 64)
        #expect(result.stderr.contains(message), "stderr:\n\(result.stderr)")
    }

    @Test("An option given twice is refused by name unless the parser itself repeats it (every mode, every option)")
    func repeatedOptions() async throws {
        let dump = try await ProxyProcess.runToExit(["--experimental-dump-help"], timeout: 10)
        let root = try #require(try JSONSerialization.jsonObject(with: Data(dump.stdout.utf8)) as? [String: Any])
        let modes = try #require((root["command"] as? [String: Any])?["subcommands"] as? [[String: Any]])
            .filter { ["forward", "socks", "transparent", "mux", "demux"].contains($0["commandName"] as? String) }
        #expect(modes.count == 5)
        var repeating: [String: Set<String>] = [:]
        for mode in modes {
            let name = try #require(mode["commandName"] as? String)
            for argument in mode["arguments"] as? [[String: Any]] ?? [] {
                guard argument["kind"] as? String != "positional",
                    let long = (argument["names"] as? [[String: Any]])?.first(where: { $0["kind"] as? String == "long" })?["name"] as? String,
                    long != "help"
                else { continue }
                let isOption = argument["kind"] as? String == "option"
                let twice = isOption ? ["--\(long)=1", "--\(long)=2"] : ["--\(long)", "--\(long)"]
                // The values need not be valid: repeats are looked for before any value is parsed.
                let result = try await ProxyProcess.runToExit([name] + twice, timeout: 10)
                if argument["isRepeating"] as? Bool == true && isOption {
                    repeating[name, default: []].insert(long)
                    #expect(!result.stderr.contains("given 2 times"), "\(name) --\(long) repeats; stderr:\n\(result.stderr)")
                } else {
                    #expect(result.status == 64, "\(name) --\(long) given twice; stderr:\n\(result.stderr)")
                    #expect(result.stderr.contains("Error: --\(long) given 2 times: give it once"), "stderr:\n\(result.stderr)")
                }
            }
        }
        #expect(
            repeating == [
                "forward": ["target", "allow", "trusted-proxy"], "socks": ["deny-destination", "allow", "trusted-proxy"],
                "transparent": ["allow", "trusted-proxy"], "mux": ["allow", "trusted-proxy"], "demux": ["allow", "trusted-proxy"],
            ])
    }

    @Test("IPv6: --listen [::1]:0 --target [::1]:PORT forwards", .enabled(if: ipv6LoopbackAvailable, "::1 is not available on this machine"))
    func ipv6() async throws {
        let server = try TestServer(host: "::1", handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.start(["forward", "--listen", "[::1]:0", "--target", "[::1]:\(server.port)"])
        defer { proxy.kill() }
        #expect(proxy.listenHost == "[::1]", "listening on \(proxy.listenHost)")
        try Self.expectEcho(host: "::1", port: proxy.port)
        let accepted = await proxy.waitForLine(containing: "bridge accepted", timeout: 3)
        #expect(accepted.flatMap { logValue("client.address", in: $0) }?.hasPrefix("[::1]:") == true, "\(accepted ?? "-")")
    }

    @Test("A host name target: --target localhost:PORT forwards")
    func hostNameTarget() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.start(["forward", "--listen", "127.0.0.1:0", "--target", "localhost:\(server.port)"])
        defer { proxy.kill() }
        try Self.expectEcho(port: proxy.port)
        let connected = await proxy.waitForLine(containing: "bridge connected", timeout: 3)
        #expect(connected.flatMap { logValue("server.address", in: $0) } == "127.0.0.1:\(server.port)", "\(connected ?? "-")")
    }

    @Test(
        "SIGTERM with an open bridge: it keeps being served, new clients are refused, exit 0 once it ends",
        .serialized,
        arguments: DataPath.allCases
    )
    func sigtermDrainsOpenBridge(path: DataPath) async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, path.arguments)
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        try client.send("one")
        #expect(try client.recvExactly(3, timeout: 5) == bytes("one"))
        proxy.terminate()
        #expect(await proxy.waitForLine(containing: "shutting down", timeout: 3) != nil)
        await delay(seconds: 0.2)

        try client.send("two")
        #expect(try client.recvExactly(3, timeout: 5) == bytes("two"), "the open bridge is still served")
        #expect(proxy.isRunning)

        // A new client is refused: the connect fails, or the connection is closed without being bridged.
        if let late = try? TestSocket.connect(port: proxy.port, timeout: 2) {
            _ = late.trySend(bytes("late"))
            let end = await late.waitForEnd(timeout: 3)
            #expect(end.end.isClosed && end.count == 0, "a new client after SIGTERM is not served: \(end)")
        }
        #expect(server.acceptedCount == 1, "no new bridge reached the server")

        client.shutdownWrite()
        let rest = try await onThread { try client.readToEnd(timeout: 5) }
        #expect(rest.end == .eof)
        let status = await proxy.waitForExit(timeout: 5)
        #expect(status == 0, "exit status \(String(describing: status))")
        #expect(proxy.terminationReason == .exit)
        let closed = proxy.closedLines
        #expect(closed.count == 1 && closed.first.flatMap { logValue("close.reason", in: $0) } == "completed", "\(closed)")
    }

    @Test(
        "SIGTERM with --drain-timeout 1 and a bridge that stays open: exit 0 within 1-4 s, drainTimeout logged",
        .serialized,
        arguments: DataPath.allCases
    )
    func sigtermDrainTimeout(path: DataPath) async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--drain-timeout", "1"] + path.arguments)
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        try client.send("hold")
        #expect(try client.recvExactly(4, timeout: 5) == bytes("hold"))
        let started = now()
        proxy.terminate()
        let status = await proxy.waitForExit(timeout: 6)
        let elapsed = now() - started
        #expect(status == 0, "exit status \(String(describing: status)); stderr:\n\(proxy.stderr)")
        #expect((0.8...4).contains(elapsed), "exited after \(elapsed) s")
        let end = await client.waitForEnd(timeout: 2)
        #expect(end.end.isClosed, "the client's connection was closed: \(end.end)")
        await delay(seconds: 0.1)
        let closed = proxy.closedLines
        #expect(closed.first.flatMap { logValue("close.reason", in: $0) } == "drainTimeout", "\(closed)")
    }

    @Test("SIGTERM with --metrics after a scrape: exit 0 and nothing on stderr but log lines (no NIO error at shutdown)")
    func sigtermWithMetricsIsClean() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--metrics", "127.0.0.1:0"])
        defer { proxy.kill() }
        _ = try await PrometheusText.scrape(proxy)
        proxy.terminate()
        #expect(await proxy.waitForExit(timeout: 6) == 0)
        await delay(seconds: 0.1)
        #expect(proxy.lines(containing: "ERROR").isEmpty, "\(proxy.stderr)")
    }

    @Test("A second SIGTERM exits at once")
    func secondSignalExitsAtOnce() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port)  // default drain timeout: 10 s
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        try client.send("hold")
        #expect(try client.recvExactly(4, timeout: 5) == bytes("hold"))
        proxy.terminate()
        #expect(await proxy.waitForLine(containing: "shutting down", timeout: 3) != nil)
        #expect(await proxy.waitForExit(timeout: 0.5) == nil, "still draining after the first signal")
        let started = now()
        proxy.terminate()
        let status = await proxy.waitForExit(timeout: 3)
        #expect(status != nil, "exited after the second signal")
        #expect(now() - started < 1.5, "at once: \(now() - started) s")
        #expect(proxy.terminationReason == .exit, "exited, not killed by the signal")
    }

    @Test("SIGHUP outside run mode is logged and ignored: the proxy keeps serving, then drains on SIGTERM")
    func sighupIgnored() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port)
        defer { proxy.kill() }
        proxy.signal(SIGHUP)
        #expect(await proxy.waitForLine(containing: "SIGHUP ignored", timeout: 5) != nil, "stderr:\n\(proxy.stderr)")
        #expect(proxy.isRunning)
        try Self.expectEcho(port: proxy.port)
        proxy.terminate()
        #expect(await proxy.waitForExit(timeout: 10) == 0)
        #expect(proxy.terminationReason == .exit)
    }

    @Test(
        "Logs to a pipe whose reader has gone (a log shipper that exits, `| head`): no death by SIGPIPE; SIGHUP is ignored, SIGTERM drains and exits 0",
        arguments: ["direct", "nio"]
    )
    func logReaderGone(engine: String) async throws {
        let proxy = try PipedProxy(["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--engine", engine])
        defer { proxy.kill() }
        _ = try proxy.port()
        try proxy.closeReader()

        Glibc.kill(proxy.pid, SIGHUP)  // logged from the signal task: a write to the dead pipe
        await delay(seconds: 0.5)
        #expect(proxy.process.isRunning, "alive after SIGHUP")
        Glibc.kill(proxy.pid, SIGTERM)
        #expect(await proxy.exitedCleanly(within: 10), "status \(proxy.process.terminationStatus)")
    }

    @Test("Logs to a pipe nobody reads (a paused terminal, a stuck log shipper): the proxy keeps serving, drops lines and says how many once read")
    func logReaderStuck() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        // --log-data: a line per chunk, far more than the pipe and the queue hold.
        let proxy = try PipedProxy(["forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:\(server.port)", "--log-data"])
        defer { proxy.kill() }
        let port = try proxy.port()

        // From here nobody reads the proxy's standard error.
        try await onThread { try MuxTests.echoRoundTrip(port: port, size: 1_500_000, seed: 1) }
        try await onThread { try MuxTests.echoRoundTrip(port: port, size: 1000, seed: 2) }
        #expect(proxy.process.isRunning)

        let later = proxy.read(until: "log lines dropped", timeout: 20)
        let dropped = later.split(separator: "\n").first { $0.contains("log lines dropped") }
        #expect(dropped.flatMap { logValue("dropped", in: String($0)) }.flatMap { Int($0) } ?? 0 > 0, "\(dropped ?? "no drop line")")
        Glibc.kill(proxy.pid, SIGTERM)
        #expect(proxy.read(until: "listener stopped", timeout: 10).contains("listener stopped"), "the lines queued at exit are written")
        #expect(await proxy.exitedCleanly(within: 10))
    }

    @Test("SIGINT behaves like SIGTERM: an idle proxy exits 0")
    func sigintExitsCleanly() async throws {
        let proxy = try await ProxyProcess.forward(to: 9)
        defer { proxy.kill() }
        proxy.signal(SIGINT)
        let status = await proxy.waitForExit(timeout: 5)
        #expect(status == 0)
        #expect(proxy.terminationReason == .exit)
    }

    @Test("--log-format json: every line is a JSON object with time, level and message; bridge events carry their keys")
    func jsonLogs() async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, ["--log-format", "json"])
        defer { proxy.kill() }

        let client = try TestSocket.connect(port: proxy.port)
        try client.send("json!")
        #expect(try client.recvExactly(5, timeout: 5) == bytes("json!"))
        client.shutdownWrite()
        _ = try client.readToEnd(timeout: 5)
        #expect(await proxy.waitForLine(containing: "bridge closed", timeout: 5) != nil)

        var messages: [String: [String: Any]] = [:]
        for line in proxy.lines where !line.isEmpty {
            let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            #expect(object != nil, "not a JSON object: \(line)")
            guard let object else { continue }
            for key in ["time", "level", "message"] {
                #expect(object[key] is String, "\(key) in \(line)")
            }
            if let message = object["message"] as? String { messages[message] = object }
        }
        let listening = messages.first { $0.key.contains("listening on") }
        #expect(listening != nil)
        #expect(messages["bridge accepted"]?["client.address"] is String)
        #expect(messages["bridge connected"]?["server.address"] as? String == "127.0.0.1:\(server.port)")
        let closed = try #require(messages["bridge closed"])
        #expect(closed["close.reason"] as? String == "completed")
        // Counts, ids and durations are JSON numbers, so `jq` can sum and compare them.
        #expect((closed["bytes.upstream"] as? NSNumber)?.intValue == 5, "\(closed)")
        #expect((closed["bytes.downstream"] as? NSNumber)?.intValue == 5)
        #expect((closed["bridge.id"] as? NSNumber)?.intValue == 1)
        #expect(((closed["duration"] as? NSNumber)?.doubleValue ?? -1) >= 0)
    }

    // MARK: Helpers

    static func expectEcho(host: String = "127.0.0.1", port: Int) throws {
        let client = try TestSocket.connect(host: host, port: port)
        defer { client.close() }
        try client.send("echo me")
        #expect(try client.recvExactly(7, timeout: 5) == bytes("echo me"))
    }
}
