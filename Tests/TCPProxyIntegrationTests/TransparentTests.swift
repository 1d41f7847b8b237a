import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// SPEC §3 transparent mode on real topologies: client, router and server network namespaces joined by
/// veth pairs (Support/NetworkNamespaces.swift), the firewall rules of docs/TRANSPARENT.md installed in
/// the router exactly as written there, and `tcpproxy transparent` running in the router. The client
/// connects to the server's real address; the proxy must carry the bridge like forward mode does.
@Suite(
    "Transparent mode across network namespaces",
    .serialized,
    .ownThread,
    .enabled(if: NetworkNamespaces.available, Comment(rawValue: NetworkNamespaces.unavailableReason ?? ""))
)
struct TransparentTests {
    typealias Family = Topology.Family

    /// One way of intercepting: the docs' rule blocks and the proxy's options.
    struct Interception: Sendable, CustomTestStringConvertible {
        let name: String
        let rules: [String]
        let arguments: [String]
        var testDescription: String { self.name }

        /// No `--mode`: redirect is the default.
        static let redirectIptables = Interception(name: "redirect, iptables", rules: ["redirect-iptables"], arguments: [])
        static let redirectNftables = Interception(
            name: "redirect, nftables",
            rules: ["redirect-nftables"],
            arguments: ["--mode", "redirect"]
        )
        static let tproxyIptables = Interception(name: "tproxy, iptables", rules: ["tproxy-iptables"], arguments: ["--mode", "tproxy"])
        static let tproxyNftables = Interception(name: "tproxy, nftables", rules: ["tproxy-nftables"], arguments: ["--mode", "tproxy"])

        static let all = [redirectIptables, redirectNftables, tproxyIptables, tproxyNftables]

        /// The same on the NIO bridge (`--engine nio`); without it the direct engine serves the listener.
        var onNIO: Interception {
            Interception(name: "\(self.name), NIO", rules: self.rules, arguments: self.arguments + ["--engine", "nio"])
        }

        /// The engine the listener's ready line names (NIO's names none).
        var engine: String? {
            self.arguments.contains("--engine") ? nil : "direct"
        }

        /// The two engines' views of the usual two interceptions.
        static let bothEngines = [redirectIptables, tproxyIptables, redirectIptables.onNIO, tproxyIptables.onNIO]

        /// The same with `--spoof-source` and, for redirect, the extra rules it needs.
        var spoofing: Interception {
            let extra = self.rules == ["redirect-iptables"] ? ["spoof-redirect-iptables"]
                : self.rules == ["redirect-nftables"] ? ["spoof-redirect-nftables"] : []
            return Interception(name: "\(self.name), --spoof-source", rules: self.rules + extra, arguments: self.arguments + ["--spoof-source"])
        }
    }

    // MARK: Data, EOF and resets

    @Test(
        "A client connecting to the server's address is bridged: 1 MB echoed both ways, the client's EOF passed on, the server sees the router",
        arguments: Interception.all + Interception.all.map(\.onNIO), [Family.ipv4, .ipv6]
    )
    func dataBothWays(interception: Interception, family: Family) async throws {
        let lab = try await TransparentLab.start(interception)
        defer { lab.close() }
        let bridge = try await lab.open(family)
        defer { bridge.close() }
        #expect(bridge.peer == Topology.routerServerSide[family], "without --spoof-source the server sees the proxy host")

        let upload = pattern(count: megabyte, seed: 71)
        async let echoed: StreamEnd = onThread { echoUntilEnd(bridge.upstream) }
        async let sent: Void = onThread {
            try bridge.client.send(upload, timeout: 20)
            bridge.client.shutdownWrite()
        }
        let received = try await onThread { try bridge.client.readToEnd(timeout: 20) }
        try await sent
        #expect(try await echoed == .eof, "the server sees the client's EOF after all its data")
        #expect(received.end == .eof, "the server's EOF comes back to the client")
        #expect(sameBytes(received.bytes, upload), "first difference at \(String(describing: firstDifference(received.bytes, upload)))")

        let connected = try #require(await lab.proxy.waitForLine(containing: "bridge connected", timeout: 5))
        #expect(
            logValue("server.address", in: connected) == Topology.endpoint(Topology.serverAddress[family]!, Topology.serverPort),
            "the original destination"
        )
        let closed = try #require(await lab.proxy.waitForLine(containing: "bridge closed", timeout: 5))
        #expect(logValue("close.reason", in: closed) == "completed")
        #expect(logValue("bytes.upstream", in: closed) == "\(megabyte)")
        #expect(logValue("bytes.downstream", in: closed) == "\(megabyte)")
        if interception.arguments.isEmpty {
            #expect(lab.proxy.lines(containing: "mode=\"transparent (redirect)\"").count == 1, "redirect is the default mode")
        }
        let ready = lab.proxy.lines(containing: "listening on").first
        #expect(ready.flatMap { logValue("engine", in: $0) } == interception.engine, "\(ready ?? "no ready line")")
    }

    @Test(
        "Server half-close: after the server's EOF the client still sends 64 KB and the server gets all of it",
        arguments: Interception.bothEngines, [Family.ipv4, .ipv6]
    )
    func serverHalfClose(interception: Interception, family: Family) async throws {
        let lab = try await TransparentLab.start(interception)
        defer { lab.close() }
        let bridge = try await lab.open(family)
        defer { bridge.close() }
        let upload = pattern(count: 65536, seed: 72)

        try bridge.upstream.send("hello")
        bridge.upstream.shutdownWrite()
        let greeting = try await onThread { try bridge.client.readToEnd(timeout: 5) }
        #expect(greeting.bytes == bytes("hello"))
        #expect(greeting.end == .eof, "the client sees the server's EOF")

        try bridge.client.send(upload)
        bridge.client.shutdownWrite()
        let received = try await onThread { try bridge.upstream.readToEnd(timeout: 5) }
        #expect(received.end == .eof)
        #expect(sameBytes(received.bytes, upload))
        let closed = await lab.proxy.waitForLine(containing: "bridge closed", timeout: 5)
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "completed")
    }

    @Test(
        "Resets pass through: a client reset reaches the server (clientReset), a server reset reaches the client (serverReset)",
        arguments: Interception.bothEngines, [Family.ipv4, .ipv6]
    )
    func resets(interception: Interception, family: Family) async throws {
        let lab = try await TransparentLab.start(interception)
        defer { lab.close() }

        let first = try await lab.open(family)
        defer { first.close() }
        try first.client.send("x")
        #expect(try first.upstream.recvExactly(1, timeout: 5) == bytes("x"))
        first.client.resetClose()
        let serverSide = await first.upstream.waitForEnd(timeout: 5)
        #expect(serverSide.end == .reset || serverSide.end == .eof, "the server's connection ends promptly, got \(serverSide.end)")
        #expect(await lab.proxy.waitForLine(containing: "close.reason=clientReset", timeout: 5) != nil)

        let second = try await lab.open(family)
        defer { second.close() }
        try second.upstream.send("y")
        #expect(try second.client.recvExactly(1, timeout: 5) == bytes("y"))
        second.upstream.resetClose()
        let clientSide = await second.client.waitForEnd(timeout: 5)
        #expect(clientSide.end == .reset, "the client sees a reset, got \(clientSide.end)")
        #expect(await lab.proxy.waitForLine(containing: "close.reason=serverReset", timeout: 5) != nil)
    }

    @Test(
        "The original destination refuses the connection: the client is closed promptly and the log says connectFailed",
        arguments: Interception.bothEngines, [Family.ipv4, .ipv6]
    )
    func connectFailed(interception: Interception, family: Family) async throws {
        let lab = try await TransparentLab.start(interception)
        defer { lab.close() }
        // Nothing listens on the server's port 7001: the server answers the proxy's SYN with a reset.
        let client = try await lab.topology.connect(from: .client, to: Topology.serverAddress[family]!, port: Topology.serverPort + 1)
        defer { client.close() }
        let end = await client.waitForEnd(timeout: 5)
        #expect(end.end == .eof || end.end == .reset, "the client is closed, got \(end.end)")
        let closed = try #require(await lab.proxy.waitForLine(containing: "bridge closed", timeout: 5))
        #expect(logValue("close.reason", in: closed) == "connectFailed")
        let failed = try #require(lab.proxy.lines(containing: "bridge connect failed").first)
        #expect(logValue("server.address", in: failed) == Topology.endpoint(Topology.serverAddress[family]!, Topology.serverPort + 1))
    }

    @Test(
        "--proxy-protocol tells the server the client's original destination, not the proxy's listener",
        arguments: Interception.bothEngines, [Family.ipv4, .ipv6]
    )
    func proxyHeaderNamesOriginalDestination(interception: Interception, family: Family) async throws {
        let lab = try await TransparentLab.start(interception, extraArguments: ["--proxy-protocol", "v1"])
        defer { lab.close() }
        let bridge = try await lab.open(family)
        defer { bridge.close() }
        try bridge.client.send("hi")
        bridge.client.shutdownWrite()
        let received = try await onThread { try bridge.upstream.readToEnd(timeout: 5) }
        let text = String(decoding: received.bytes, as: UTF8.self)
        let fields = text.components(separatedBy: "\r\n")[0].split(separator: " ").map(String.init)
        // The listener is [::]:15001, so an IPv4 client's addresses are IPv4-mapped (TCP6).
        let server = Topology.serverAddress[family]!
        #expect(fields.count == 6 && fields[0] == "PROXY" && fields[1] == "TCP6", "\(text)")
        #expect(fields.count == 6 && fields[3] == (family == .ipv4 ? "::ffff:\(server)" : server), "\(text)")
        #expect(fields.count == 6 && fields[5] == "\(Topology.serverPort)", "\(text)")
        #expect(text.hasSuffix("\r\nhi"), "the header, then the client's bytes: \(text)")
    }

    // MARK: --spoof-source

    @Test(
        "--spoof-source: the server sees the client's own address, and data flows both ways",
        arguments: Interception.all.map(\.spoofing) + [Interception.redirectIptables.spoofing.onNIO, .tproxyIptables.spoofing.onNIO],
        [Family.ipv4, .ipv6]
    )
    func spoofSource(interception: Interception, family: Family) async throws {
        let lab = try await TransparentLab.start(interception)
        defer { lab.close() }
        let ready = lab.proxy.lines(containing: "listening on").first
        #expect(ready.flatMap { logValue("engine", in: $0) } == interception.engine, "\(ready ?? "no ready line")")
        let bridge = try await lab.open(family)
        defer { bridge.close() }
        #expect(bridge.peer == Topology.clientAddress[family], "the server sees the real client")

        try bridge.client.send("ping")
        bridge.client.shutdownWrite()
        let request = try await onThread { try bridge.upstream.readToEnd(timeout: 5) }
        #expect(request.bytes == bytes("ping"))
        #expect(request.end == .eof)
        try bridge.upstream.send("pong")
        bridge.upstream.shutdownWrite()
        let reply = try await onThread { try bridge.client.readToEnd(timeout: 5) }
        #expect(reply.bytes == bytes("pong"))
        #expect(reply.end == .eof)
        let closed = await lab.proxy.waitForLine(containing: "bridge closed", timeout: 5)
        #expect(closed.flatMap { logValue("close.reason", in: $0) } == "completed")
    }

    @Test(
        "redirect and --spoof-source: a client on the very port the kernel would give the proxy's connection still reaches the server",
        arguments: [Interception.redirectIptables.spoofing, .redirectIptables.spoofing.onNIO], [Family.ipv4, .ipv6]
    )
    func spoofedSourcePortOfTheClient(interception: Interception, family: Family) async throws {
        // One ephemeral port in both namespaces: the client's connection and a kernel-picked source port for the
        // proxy's are then the same, and the client's conntrack entry would redirect the proxy's SYN to itself.
        let onePort = "sysctl -qw net.ipv4.ip_local_port_range='45001 45001'"
        let lab = try await TransparentLab.start(interception, extraArguments: ["--connect-timeout", "3"], script: onePort)
        defer { lab.close() }
        let client = lab.topology.client
        let set = await onThreadNonThrowing { Command.run(["ip", "netns", "exec", client, "sh", "-e", "-c", onePort]) }
        #expect(set.status == 0, "\(set.output)")

        let bridge = try await lab.open(family)
        defer { bridge.close() }
        #expect(bridge.client.localPort == 45001)
        #expect(bridge.peer == Topology.clientAddress[family], "the server sees the real client")
        try bridge.client.send("ping")
        #expect(try await onThread { try bridge.upstream.recvExactly(4, timeout: 5) } == bytes("ping"))
        try bridge.upstream.send("pong")
        #expect(try await onThread { try bridge.client.recvExactly(4, timeout: 5) } == bytes("pong"))
    }

    // MARK: Refusals

    @Test(
        "Loop guard: a connection whose original destination is the proxy's own listener is closed, logged and counted, never forwarded",
        arguments: Interception.bothEngines, [Family.ipv4, .ipv6]
    )
    func loopGuard(interception: Interception, family: Family) async throws {
        let lab = try await TransparentLab.start(interception, extraArguments: ["--metrics", "127.0.0.1:9100"])
        defer { lab.close() }
        let ownAddress = Topology.routerClientSide[family]!

        let client = try await lab.topology.connect(from: .client, to: ownAddress, port: Topology.proxyPort)
        defer { client.close() }
        let end = await client.waitForEnd(timeout: 5)
        #expect(end.end == .eof || end.end == .reset, "the proxy closes it, got \(end.end)")
        #expect(end.count == 0)
        #expect(!lab.server.hasPendingConnection(within: 0.3), "nothing reaches the server")

        let line = try #require(await lab.proxy.waitForLine(containing: "connection rejected", timeout: 5))
        #expect(line.contains("its original destination is this listener"))
        #expect(logValue("close.reason", in: line) == "loopRefused")
        #expect(logValue("original.destination", in: line) == Topology.endpoint(ownAddress, Topology.proxyPort))
        #expect(lab.proxy.lines(containing: "bridge accepted").isEmpty)
        let metrics = try await lab.routerMetrics()
        #expect(metrics.contains(#"reason="loopRefused"} 1"#), "counted in tcpproxy_connections_rejected_total")

        // The listener still serves intercepted clients.
        let bridge = try await lab.open(family)
        defer { bridge.close() }
        try bridge.client.send("after")
        #expect(try bridge.upstream.recvExactly(5, timeout: 5) == bytes("after"))
    }

    @Test(
        "Loop guard: an address made the router's by a local route (AnyIP, on no interface) is this listener too",
        arguments: Interception.bothEngines, [Family.ipv4, .ipv6]
    )
    func loopGuardLocalRoute(interception: Interception, family: Family) async throws {
        let anyIP = """
            ip route add local 10.88.0.0/24 dev lo
            ip -6 route add local fd88::/64 dev lo
            """
        let lab = try await TransparentLab.start(interception, script: anyIP)
        defer { lab.close() }
        let address = family == .ipv4 ? "10.88.0.5" : "fd88::5"

        let client = try await lab.topology.connect(from: .client, to: address, port: Topology.proxyPort)
        defer { client.close() }
        let end = await client.waitForEnd(timeout: 5)
        #expect(end.end == .eof || end.end == .reset, "the proxy closes it, got \(end.end)")
        let line = try #require(await lab.proxy.waitForLine(containing: "connection rejected", timeout: 5))
        #expect(logValue("close.reason", in: line) == "loopRefused", "\(line)")
        #expect(lab.proxy.lines(containing: "bridge accepted").isEmpty, "never forwarded: \(lab.proxy.stderr.suffix(1000))")
    }

    @Test(
        "A link-local original destination (the router's fe80:: address on the client's link) is reached on that link",
        arguments: Interception.bothEngines
    )
    func linkLocalDestination(interception: Interception) async throws {
        let lab = try await TransparentLab.start(interception)
        defer { lab.close() }
        // A service on the router itself; the rules hand every TCP connection from the client's link to the proxy.
        let service = try NamespaceListener(namespace: lab.topology.router, port: Topology.serverPort)
        defer { service.close() }
        let router = try lab.topology.linkLocalAddress(of: Topology.clientInterface, in: .router)
        let clientLink = try lab.topology.interfaceIndex(of: Topology.clientSideInterface, in: .client)

        let client = try await lab.topology.connect(from: .client, to: "\(router)%\(clientLink)", port: Topology.serverPort)
        defer { client.close() }
        let (upstream, _) = try await onThread { try service.accept(timeout: 5) }
        defer { upstream.close() }
        try client.send("ping")
        #expect(try await onThread { try upstream.recvExactly(4, timeout: 5) } == Array("ping".utf8))
        try upstream.send("pong")
        #expect(try await onThread { try client.recvExactly(4, timeout: 5) } == Array("pong".utf8))

        let connected = try #require(await lab.proxy.waitForLine(containing: "bridge connected", timeout: 5))
        #expect(
            logValue("server.address", in: connected) == "[\(router)%\(Topology.clientInterface)]:\(Topology.serverPort)",
            "the original destination, on the router's interface towards the client"
        )
    }

    /// Connections to the proxy's own port exempt from conntrack: both directions, so getsockopt finds
    /// nothing; or the client's packets only, so the proxy's SYN-ACK starts an entry that names the client.
    static let untrackedBothWays = """
        iptables  -t raw -A PREROUTING -i "$IN_IF" -p tcp --dport "$PROXY_PORT" -j NOTRACK
        iptables  -t raw -A OUTPUT -p tcp --sport "$PROXY_PORT" -j NOTRACK
        ip6tables -t raw -A PREROUTING -i "$IN_IF" -p tcp --dport "$PROXY_PORT" -j NOTRACK
        ip6tables -t raw -A OUTPUT -p tcp --sport "$PROXY_PORT" -j NOTRACK
        """
    static let untrackedFromClient = """
        iptables  -t raw -A PREROUTING -i "$IN_IF" -p tcp --dport "$PROXY_PORT" -j NOTRACK
        ip6tables -t raw -A PREROUTING -i "$IN_IF" -p tcp --dport "$PROXY_PORT" -j NOTRACK
        """

    @Test(
        "redirect: a connection conntrack has no entry for, or only one begun by the proxy's reply, has no original destination: closed, logged and counted",
        arguments: [
            (untrackedBothWays, Interception.redirectIptables), (untrackedFromClient, .redirectIptables),
            (untrackedBothWays, .redirectIptables.onNIO), (untrackedFromClient, .redirectIptables.onNIO),
        ],
        [Family.ipv4, .ipv6]
    )
    func noOriginalDestination(untracked: (rules: String, interception: Interception), family: Family) async throws {
        let lab = try await TransparentLab.start(
            untracked.interception, extraArguments: ["--metrics", "127.0.0.1:9100"], script: untracked.rules)
        defer { lab.close() }

        // The proxy is stopped while the client connects and sends a byte: the router's ACK of it (which
        // conntrack may pick up as a new entry) leaves before the proxy asks for the original destination.
        #expect(await lab.proxy.pause(), "the proxy stopped")
        let client: TestSocket
        do {
            client = try await lab.topology.connect(from: .client, to: Topology.routerClientSide[family]!, port: Topology.proxyPort)
            try client.send("x")
            try await Task.sleep(nanoseconds: 200_000_000)
        } catch {
            lab.proxy.resume()
            throw error
        }
        lab.proxy.resume()
        defer { client.close() }
        let end = await client.waitForEnd(timeout: 5)
        #expect(end.end == .eof || end.end == .reset, "the proxy closes it, got \(end.end)")
        #expect(!lab.server.hasPendingConnection(within: 0.3))

        let line = try #require(await lab.proxy.waitForLine(containing: "connection rejected", timeout: 5))
        #expect(line.contains("no original destination"))
        #expect(logValue("close.reason", in: line) == "noOriginalDestination")
        let metrics = try await lab.routerMetrics()
        #expect(metrics.contains(#"reason="noOriginalDestination"} 1"#))
    }
}

/// What needs no namespace: the privilege check and usage errors.
@Suite("Transparent mode: privileges and usage", .ownThread)
struct TransparentCommandLineTests {
    /// Root drops CAP_NET_ADMIN and CAP_NET_RAW with setpriv; anyone else lacks them already.
    static let unprivileged: [String]? = {
        if getuid() != 0 { return [] }
        return NetworkNamespaces.path(of: "setpriv").map { [$0, "--bounding-set", "-net_admin,-net_raw"] }
    }()

    /// Root keeps CAP_NET_RAW and drops CAP_NET_ADMIN: the kernel lets either set `IP_TRANSPARENT`.
    static let rawOnly: [String]? = {
        guard getuid() == 0 else { return nil }
        return NetworkNamespaces.path(of: "setpriv").map { [$0, "--bounding-set", "-net_admin"] }
    }()

    @Test(
        "Without CAP_NET_ADMIN and CAP_NET_RAW, --mode tproxy and --spoof-source exit 1 with one line saying what is missing",
        .enabled(if: unprivileged != nil, "running as root without setpriv (util-linux) to drop CAP_NET_ADMIN"),
        arguments: [
            (["--listen", "127.0.0.1:0", "--mode", "tproxy"], "cannot listen on 127.0.0.1:0: IP_TRANSPARENT needs CAP_NET_ADMIN or CAP_NET_RAW"),
            (["--listen", "[::1]:0", "--mode", "tproxy"], "cannot listen on [::1]:0: IPV6_TRANSPARENT needs CAP_NET_ADMIN or CAP_NET_RAW"),
            (["--listen", "127.0.0.1:0", "--spoof-source"], "cannot listen on 127.0.0.1:0: IP_TRANSPARENT needs CAP_NET_ADMIN or CAP_NET_RAW"),
        ]
    )
    func needsPrivilege(arguments: [String], message: String) async throws {
        let binary = try ProxyProcess.binaryURL().path
        let command = Self.unprivileged! + [binary, "transparent"] + arguments
        let result = await onThreadNonThrowing { Command.run(command, timeout: 15) }
        #expect(result.status == 1, "output: \(result.output)")
        let lines = result.output.split(separator: "\n")
        #expect(lines.count == 1, "one line, got: \(result.output)")
        #expect(result.output.contains("tcpproxy: \(message) (run as root or grant one of them)"), "got: \(result.output)")
    }

    @Test(
        "CAP_NET_RAW alone is enough for --mode tproxy and --spoof-source, as docs/TRANSPARENT.md says",
        .enabled(if: rawOnly != nil, "needs root and setpriv (util-linux) to keep only CAP_NET_RAW"),
        arguments: [
            ["--listen", "127.0.0.1:0", "--mode", "tproxy"],
            ["--listen", "[::1]:0", "--mode", "tproxy"],
            ["--listen", "127.0.0.1:0", "--spoof-source"],
        ]
    )
    func rawCapabilitySuffices(arguments: [String]) async throws {
        let proxy = try await ProxyProcess.start(["transparent"] + arguments, launcher: Self.rawOnly!)
        #expect(proxy.port > 0)
        proxy.terminate()
        #expect(await proxy.waitForExit(timeout: 15) == 0, "stderr: \(proxy.stderr)")
    }

    @Test(
        "Usage errors exit 64: an unknown --mode, a missing --listen",
        arguments: [["transparent", "--listen", ":0", "--mode", "nat"], ["transparent", "--mode", "tproxy"]]
    )
    func usageErrors(arguments: [String]) async throws {
        let result = try await ProxyProcess.runToExit(arguments)
        #expect(result.status == 64, "stderr: \(result.stderr)")
        #expect(result.stderr.contains("Error:"))
        #expect(!result.stderr.contains("Fatal error"))
    }
}

// MARK: Helpers

/// A topology with the rules installed, a server listening on [::]:7000 in the server namespace, and
/// `tcpproxy transparent --listen [::]:15001` running in the router namespace.
final class TransparentLab: @unchecked Sendable {
    let topology: Topology
    let server: NamespaceListener
    let proxy: ProxyProcess

    private init(topology: Topology, server: NamespaceListener, proxy: ProxyProcess) {
        self.topology = topology
        self.server = server
        self.proxy = proxy
    }

    /// - Parameters:
    ///   - interception: the docs' rules to install and the proxy's mode options.
    ///   - extraArguments: more proxy options.
    ///   - script: a shell script run in the router (with `IN_IF` and `PROXY_PORT`) before the rules.
    static func start(
        _ interception: TransparentTests.Interception,
        extraArguments: [String] = [],
        script: String? = nil
    ) async throws -> TransparentLab {
        let topology = try await Topology.create()
        do {
            if let script { try await topology.runInRouter(script) }
            for rules in interception.rules { try await topology.installRules(rules) }
            let server = try topology.listenInServer()
            do {
                let proxy = try await topology.startProxy(
                    ["transparent", "--listen", "[::]:\(Topology.proxyPort)"] + interception.arguments + extraArguments
                )
                return TransparentLab(topology: topology, server: server, proxy: proxy)
            } catch {
                server.close()
                throw error
            }
        } catch {
            topology.destroy()
            throw error
        }
    }

    /// A client in the client namespace connected to the server's real address, and the server's side.
    func open(_ family: Topology.Family) async throws -> BridgedPair {
        let client = try await self.topology.connect(from: .client, to: Topology.serverAddress[family]!, port: Topology.serverPort)
        let server = self.server
        do {
            let (upstream, peer) = try await onThread { try server.accept(timeout: 5) }
            return BridgedPair(client: client, upstream: upstream, peer: peer)
        } catch {
            client.close()
            throw SocketError.system("the server got no connection; proxy log:\n\(self.proxy.stderr)\n\(error)", ETIMEDOUT)
        }
    }

    /// `/metrics` from the proxy's `--metrics 127.0.0.1:9100`, fetched inside the router namespace.
    func routerMetrics() async throws -> String {
        let socket = try await self.topology.connect(from: .router, to: "127.0.0.1", port: 9100)
        defer { socket.close() }
        try socket.send("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        let response = try await onThread { try socket.readToEnd(timeout: 5) }
        return String(decoding: response.bytes, as: UTF8.self)
    }

    /// Kills the proxy (by PID), closes the server and deletes the namespaces.
    func close() {
        self.proxy.kill()
        self.server.close()
        self.topology.destroy()
    }
}

/// A client connection and the server's side of the same bridge.
struct BridgedPair: Sendable {
    let client: TestSocket
    let upstream: TestSocket
    /// The client address the server saw.
    let peer: String

    func close() {
        self.client.close()
        self.upstream.close()
    }
}

/// Writes back everything `socket` reads until EOF or reset; after EOF shuts down writing. Returns how
/// the input ended.
func echoUntilEnd(_ socket: TestSocket, timeout: Double = 30) -> StreamEnd {
    let deadline = now() + timeout
    while now() < deadline {
        guard let result = try? socket.recv(timeout: 0.2) else { return .error(EIO) }
        switch result {
        case .data(let data):
            do { try socket.send(data, timeout: max(0, deadline - now())) } catch { return .error(EIO) }
        case .end(.timeout):
            continue
        case .end(let end):
            if end == .eof { socket.shutdownWrite() }
            return end
        }
    }
    return .timeout
}
