import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

@testable import TCPProxyCore

/// ``SOCKSConnector`` on real loopback sockets, with a scripted resolver.
@Suite("SOCKS connector")
struct SOCKSConnectorTests {
    /// A listener on 127.0.0.1 that counts the connections it accepts.
    final class Listener: Sendable {
        let channel: Channel
        let accepted = NIOLockedValueBox(0)
        var port: Int { self.channel.localAddress!.port! }

        init(group: EventLoopGroup) async throws {
            let accepted = self.accepted
            self.channel = try await ServerBootstrap(group: group)
                .childChannelInitializer { channel in
                    accepted.withLockedValue { $0 += 1 }
                    return channel.eventLoop.makeSucceededVoidFuture()
                }
                .bind(host: "127.0.0.1", port: 0)
                .get()
        }
    }

    /// Connects through a connector; returns the channel or the error, and how often `initialize` ran.
    /// Connects through a connector; returns the channel or the error, how often `initialize` ran, and how
    /// long the connector took, measured on the event loop (not when this task gets to run again).
    func connect(
        _ connector: SOCKSConnector,
        on group: EventLoopGroup,
        timeout: TimeAmount = .seconds(5)
    ) async -> (Result<Channel, Error>, initialized: Int, elapsed: TimeAmount) {
        var configuration = BridgeConfiguration()
        configuration.connectTimeout = timeout
        let initialized = NIOLockedValueBox(0)
        let started = NIODeadline.now()
        let finished = NIOLockedValueBox(started)
        let future = connector.connect(on: group.next(), configuration: configuration) { _ in
            initialized.withLockedValue { $0 += 1 }
        }
        future.whenComplete { _ in finished.withLockedValue { $0 = .now() } }
        let result: Result<Channel, Error>
        do { result = .success(try await future.get()) } catch { result = .failure(error) }
        return (result, initialized.withLockedValue { $0 }, finished.withLockedValue { $0 } - started)
    }

    static func resolver(_ addresses: [SocketAddress]) -> SOCKSResolver {
        { _, _, eventLoop in eventLoop.makeSucceededFuture(addresses) }
    }

    @Test("a name whose every address is denied fails with destinationDenied, and nothing is dialled")
    func deniedAfterResolution() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let listener = try await Listener(group: group)
        defer { listener.channel.close(promise: nil) }
        let socks = SOCKSConfiguration(denyDestinations: [try CIDR(parsing: "127.0.0.0/8")])
        let connector = SOCKSConnector(
            destination: .name("innocent.example", port: listener.port), socks: socks,
            resolve: Self.resolver([address("127.0.0.1", listener.port)])
        )
        let (result, initialized, _) = await self.connect(connector, on: group)
        guard case .failure(let error) = result else { Issue.record("connected to a denied address"); return }
        #expect(error as? SOCKSConnectError == .destinationDenied("innocent.example:\(listener.port)"))
        #expect(SOCKS5ReplyCode.forConnectError(error) == .notAllowed)
        #expect(initialized == 0)
        try await Task.sleep(nanoseconds: 50_000_000)
        #expect(listener.accepted.withLockedValue { $0 } == 0)
    }

    @Test("a name that is an address literal, IPv6 bracketed or not, is never resolved, and is logged once bracketed")
    func literalNames() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let asked = NIOLockedValueBox<[String]>([])
        let resolve: SOCKSResolver = { host, _, eventLoop in
            asked.withLockedValue { $0.append(host) }
            return eventLoop.makeSucceededFuture([])
        }
        let socks = SOCKSConfiguration(denyDestinations: [try CIDR(parsing: "::1/128"), try CIDR(parsing: "127.0.0.0/8")])
        for host in ["[::1]", "::1", "127.0.0.1"] {
            let connector = SOCKSConnector(destination: .name(host, port: 80), socks: socks, resolve: resolve)
            let (result, _, _) = await self.connect(connector, on: group)
            guard case .failure(let error) = result else { Issue.record("connected to \(host)"); continue }
            let logged = host.contains(":") ? "[::1]:80" : "127.0.0.1:80"
            #expect(error as? SOCKSConnectError == .destinationDenied(logged), "\(host)")
        }
        #expect(asked.withLockedValue { $0 } == [], "literals go to the deny list as addresses")
        #expect(SOCKSDestination.name("[example]", port: 80).description == "[example]:80", "not an address: as given")
    }

    @Test("denied addresses are skipped, a refused one is passed over, and the bridge's handler goes into the one that connects")
    func triesInOrder() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let listener = try await Listener(group: group)
        defer { listener.channel.close(promise: nil) }
        // Port 1: below the ephemeral range, so no test running in parallel can be listening there.
        let closedPort = 1
        let socks = SOCKSConfiguration(denyDestinations: [try CIDR(parsing: "10.0.0.0/8")])
        let connector = SOCKSConnector(
            destination: .name("multi.example", port: listener.port), socks: socks,
            resolve: Self.resolver([address("10.1.1.1", 80), address("127.0.0.1", closedPort), address("127.0.0.1", listener.port)])
        )
        let (result, initialized, _) = await self.connect(connector, on: group)
        let channel = try result.get()
        #expect(channel.remoteAddress?.port == listener.port)
        #expect(initialized == 1, "initialize runs once, on the channel that connected")
        try await channel.close()
    }

    @Test("a refused address fails with ECONNREFUSED (reply 0x05)")
    func refused() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let closed = try await Listener(group: group)
        let port = closed.port
        try await closed.channel.close()
        let connector = SOCKSConnector(destination: .address(address("127.0.0.1", port)), socks: .init())
        let (result, _, _) = await self.connect(connector, on: group)
        guard case .failure(let error) = result else { Issue.record("connected"); return }
        #expect(SOCKS5ReplyCode.forConnectError(error) == .connectionRefused, "\(error)")
    }

    @Test("resolving and connecting together are bounded by the connect timeout")
    func timeout() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        // Answers only after the timeout (an unfulfilled promise would trip NIO's leak check).
        let never: SOCKSResolver = { _, _, eventLoop in
            eventLoop.scheduleTask(in: .seconds(1)) { [address("127.0.0.1", 9)] }.futureResult
        }
        let connector = SOCKSConnector(destination: .name("slow.example", port: 80), socks: .init(), resolve: never)
        let (result, _, elapsed) = await self.connect(connector, on: group, timeout: .milliseconds(200))
        guard case .failure(let error) = result else { Issue.record("connected"); return }
        #expect(SOCKS5ReplyCode.forConnectError(error) == .ttlExpired, "\(error)")
        #expect(elapsed >= .milliseconds(190) && elapsed < .seconds(3), "about 200 ms (\(elapsed))")
    }

    @Test("an unspecified address is never dialled, even without --deny-destination")
    func unspecified() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let connector = SOCKSConnector(destination: .name("0.0.0.0", port: 80), socks: .init())
        let (result, _, _) = await self.connect(connector, on: group)
        guard case .failure(let error) = result else { Issue.record("connected"); return }
        #expect(error as? SOCKSConnectError == .destinationDenied("0.0.0.0:80"))
    }

    @Test("getaddrinfo resolves localhost to loopback, off the event loop")
    func getaddrinfo() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let addresses = try await SOCKSConnector.resolveWithGetaddrinfo("localhost", 8080, group.next()).get()
        #expect(!addresses.isEmpty)
        #expect(addresses.allSatisfy { $0.port == 8080 })
        #expect(addresses.contains { $0.ipAddress == "127.0.0.1" || $0.ipAddress == "::1" })
        #expect(Set(addresses).count == addresses.count, "no duplicates")
    }
}
