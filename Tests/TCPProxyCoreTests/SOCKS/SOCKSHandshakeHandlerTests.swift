import Logging
import MetricsTestKit
import NIOCore
import NIOEmbedded
import Testing

#if canImport(Glibc)
import Glibc
#endif

@testable import TCPProxyCore

/// A ``SOCKSHandshakeHandler`` in an `EmbeddedChannel`, with the bridge it builds dialling an `EmbeddedConnector`.
final class SOCKSHarness {
    let loop = EmbeddedEventLoop()
    let client: EmbeddedChannel
    let connector: EmbeddedConnector
    let metrics: TestMetrics
    private let box = ReasonBox()
    private(set) var requests: [SOCKSServerStateMachine.ConnectRequest] = []

    /// A harness whose listener drains for `drainTimeout`.
    convenience init(drainTimeout: TimeAmount) throws {
        var bridge = BridgeConfiguration()
        bridge.drainTimeout = drainTimeout
        try self.init(bridge: bridge)
    }

    init(socks: SOCKSConfiguration = .init(), bridge: BridgeConfiguration = .init()) throws {
        self.client = EmbeddedChannel(loop: self.loop)
        self.connector = EmbeddedConnector(loop: self.loop)
        self.metrics = TestMetrics()
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let box = self.box
        let setup = BridgeSetup(
            id: 1,
            configuration: bridge,
            logger: logger,
            hooks: .init(finished: { box.reasons.append($0) }),
            observers: .init(metrics: ProxyMetrics(listener: "socks", target: "socks", factory: self.metrics))
        )
        let handler = SOCKSHandshakeHandler(setup: setup, socks: socks) { [unowned self] request in
            self.requests.append(request)
            return self.connector
        }
        try self.client.pipeline.syncOperations.addHandler(handler)
    }

    /// The reasons reported when the client's bridge (or handshake) ended.
    var finished: [CloseReason] { self.box.reasons }

    func activate() throws {
        try self.client.connect(to: address("127.0.0.1", 40000)).wait()
        self.loop.run()
    }

    /// The client sends `bytes` in one read.
    func send(_ bytes: [UInt8]) throws {
        try self.client.writeInbound(ByteBuffer(bytes: bytes))
        self.client.pipeline.fireChannelReadComplete()
        self.loop.run()
    }

    /// The server connection comes up, bound locally at `bound`.
    func connect(bound: SocketAddress = address("10.9.8.7", 4321)) throws {
        self.connector.channel!.localAddress = bound
        try self.connector.succeed()
        self.loop.run()
    }

    func failConnect(_ error: Error) {
        self.connector.fail(error)
        self.loop.run()
    }

    /// Everything written to the client so far.
    func writtenToClient() throws -> [UInt8] {
        var bytes: [UInt8] = []
        while let buffer = try self.client.readOutbound(as: ByteBuffer.self) { bytes += buffer.readableBytesView }
        return bytes
    }

    func writtenToServer() throws -> [UInt8] {
        var bytes: [UInt8] = []
        while let buffer = try self.connector.channel?.readOutbound(as: ByteBuffer.self) { bytes += buffer.readableBytesView }
        return bytes
    }

    func counter(_ label: String, _ extra: [(String, String)] = []) -> Int64 {
        self.metrics.counterTotal(label: label, dimensions: [("listener", "socks"), ("target", "socks")] + extra)
    }

    var handshakeHandlerPresent: Bool {
        (try? self.client.pipeline.syncOperations.handler(type: SOCKSHandshakeHandler.self)) != nil
    }
}

@Suite("SOCKS handshake handler")
struct SOCKSHandshakeHandlerTests {
    static let greeting: [UInt8] = [0x05, 0x01, 0x00]
    static let connect5: [UInt8] = [0x05, 0x01, 0x00, 0x01, 0x7F, 0x00, 0x00, 0x01, 0x00, 0x50]

    @Test("SOCKS5: the success reply, with the server socket's bound address, comes after the connect and before any data")
    func socks5Success() throws {
        let harness = try SOCKSHarness()
        try harness.activate()
        try harness.send(Self.greeting)
        #expect(try harness.writtenToClient() == [0x05, 0x00])
        try harness.send(Self.connect5 + ascii("early"))
        #expect(harness.requests.map(\.destination) == [.address(address("127.0.0.1", 80))])
        #expect(!harness.handshakeHandlerPresent, "the handshake handler left the pipeline")
        #expect(try harness.writtenToClient() == [], "no reply before the server connection is up")

        try harness.connect(bound: address("10.9.8.7", 0x1234))
        #expect(try harness.writtenToClient() == [0x05, 0x00, 0x00, 0x01, 0x0A, 0x09, 0x08, 0x07, 0x12, 0x34])
        #expect(try harness.writtenToServer() == ascii("early"), "bytes after the request reach the server")

        try harness.connector.channel!.writeInbound(ByteBuffer(string: "reply"))
        harness.connector.channel!.pipeline.fireChannelReadComplete()
        #expect(try harness.writtenToClient() == ascii("reply"))
        #expect(harness.counter("tcpproxy_socks_handshakes_total", [("version", "5")]) == 1)
        #expect(harness.counter("tcpproxy_socks_replies_total", [("code", "0x00")]) == 1)
    }

    @Test("SOCKS4a: granted with the bound IPv4 address")
    func socks4aSuccess() throws {
        let harness = try SOCKSHarness()
        try harness.activate()
        try harness.send([0x04, 0x01, 0x00, 0x50, 0x00, 0x00, 0x00, 0x01, 0x00] + ascii("localhost") + [0x00])
        #expect(harness.requests.map(\.destination) == [.name("localhost", port: 80)])
        try harness.connect(bound: address("127.0.0.1", 50000))
        #expect(try harness.writtenToClient() == [0x00, 0x5A, 0xC3, 0x50, 0x7F, 0x00, 0x00, 0x01])
        #expect(harness.counter("tcpproxy_socks_handshakes_total", [("version", "4a")]) == 1)
    }

    @Test(
        "a failed connect gets the reply for its error, then a close",
        arguments: [
            (IOError(errnoCode: ECONNREFUSED, reason: "connect") as any Error, UInt8(0x05)),
            (IOError(errnoCode: ENETUNREACH, reason: "connect"), 0x03),
            (IOError(errnoCode: EHOSTUNREACH, reason: "connect"), 0x04),
            (ChannelError.connectTimeout(.seconds(10)), 0x06),
            (SOCKSConnectError.destinationDenied("x:1"), 0x02),
            (SOCKSConnectError.cannotResolve("x"), 0x04),
            (IOError(errnoCode: EMFILE, reason: "socket"), 0x01),
        ] as [(any Error, UInt8)]
    )
    func socks5Failure(error: any Error, code: UInt8) throws {
        let harness = try SOCKSHarness()
        try harness.activate()
        try harness.send(Self.greeting + Self.connect5)
        _ = try harness.writtenToClient()
        harness.failConnect(error)
        #expect(try harness.writtenToClient() == [0x05, code, 0x00, 0x01, 0, 0, 0, 0, 0, 0])
        #expect(!harness.client.isActive)
        #expect(harness.finished.count == 1)
        #expect(harness.counter("tcpproxy_socks_replies_total", [("code", SOCKSReply.label(code))]) == 1)
    }

    @Test("SOCKS4: any failed connect is 0x5B")
    func socks4Failure() throws {
        let harness = try SOCKSHarness()
        try harness.activate()
        try harness.send([0x04, 0x01, 0x00, 0x50, 0x7F, 0x00, 0x00, 0x01, 0x00])
        harness.failConnect(IOError(errnoCode: ECONNREFUSED, reason: "connect"))
        #expect(try harness.writtenToClient() == [0x00, 0x5B, 0, 0, 0, 0, 0, 0])
        #expect(harness.finished == [.connectFailed])
    }

    @Test("a malformed request gets its reply and a close, and the handshake is reported as ended")
    func malformed() throws {
        let harness = try SOCKSHarness()
        try harness.activate()
        try harness.send(Self.greeting + [0x05, 0x01, 0x00, 0x02, 0, 0, 0, 0, 0, 0])
        #expect(try harness.writtenToClient() == [0x05, 0x00, 0x05, 0x08, 0x00, 0x01, 0, 0, 0, 0, 0, 0])
        #expect(!harness.client.isActive)
        #expect(harness.finished == [.handshakeFailed])
        #expect(harness.requests.isEmpty)
        #expect(harness.counter("tcpproxy_socks_replies_total", [("code", "0x08")]) == 1)
    }

    @Test("a wrong password: 0x01 0x01, a close, an authentication failure counted")
    func wrongPassword() throws {
        let harness = try SOCKSHarness(socks: .init(users: testUsers))
        try harness.activate()
        try harness.send([0x05, 0x01, 0x02, 0x01, 0x05] + ascii("alice") + [0x01, 0x78])
        #expect(try harness.writtenToClient() == [0x05, 0x02, 0x01, 0x01])
        #expect(harness.finished == [.notAllowed])
        #expect(harness.counter("tcpproxy_socks_auth_failures_total") == 1)
    }

    @Test("a handshake that does not complete in time is closed, without a reply")
    func timeout() throws {
        let harness = try SOCKSHarness(socks: .init(handshakeTimeout: .seconds(3)))
        try harness.activate()
        try harness.send([0x05, 0x01])
        harness.loop.advanceTime(by: .milliseconds(2999))
        #expect(harness.client.isActive)
        harness.loop.advanceTime(by: .milliseconds(1))
        #expect(!harness.client.isActive)
        #expect(try harness.writtenToClient() == [])
        #expect(harness.finished == [.handshakeTimeout])
    }

    @Test("the handshake timeout stops once the request is read")
    func timeoutStops() throws {
        let harness = try SOCKSHarness(socks: .init(handshakeTimeout: .seconds(3)))
        try harness.activate()
        try harness.send(Self.greeting + Self.connect5)
        harness.loop.advanceTime(by: .seconds(2))
        try harness.connect()
        harness.loop.advanceTime(by: .seconds(5))
        #expect(harness.client.isActive)
        #expect(harness.finished == [])
    }

    @Test("a client that leaves mid-handshake is reported once")
    func clientLeaves() throws {
        let harness = try SOCKSHarness()
        try harness.activate()
        try harness.send([0x04, 0x01, 0x00])
        harness.client.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        harness.loop.run()
        #expect(!harness.client.isActive)
        #expect(harness.finished == [.clientReset])
    }

    @Test("a request that completes once the drain began is refused (0x01), and no server connection is tried")
    func requestDuringDrain() throws {
        let harness = try SOCKSHarness(drainTimeout: .seconds(2))
        try harness.activate()
        try harness.send(Self.greeting)
        #expect(try harness.writtenToClient() == [0x05, 0x00])
        harness.client.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        try harness.send(Self.connect5)
        #expect(try harness.writtenToClient().prefix(2) == [0x05, 0x01])
        #expect(harness.connector.channel == nil, "no server connection")
        harness.loop.run()
        #expect(!harness.client.isActive)
        #expect(harness.finished == [.drainTimeout])
    }

    @Test("a SOCKS4 request that completes once the drain began is refused (0x5B)")
    func socks4RequestDuringDrain() throws {
        let harness = try SOCKSHarness(drainTimeout: .seconds(2))
        try harness.activate()
        harness.client.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        try harness.send([0x04, 0x01, 0x00, 0x50, 0x7F, 0x00, 0x00, 0x01, 0x00])
        #expect(try harness.writtenToClient().prefix(2) == [0x00, 0x5B])
        #expect(harness.connector.channel == nil, "no server connection")
        harness.loop.run()
        #expect(harness.finished == [.drainTimeout])
    }

    @Test("a handshake still going when the drain begins is cut at the drain timeout, not the handshake timeout")
    func handshakeCutByDrain() throws {
        let harness = try SOCKSHarness(drainTimeout: .seconds(2))
        try harness.activate()
        try harness.send(Self.greeting)
        harness.loop.advanceTime(by: .seconds(1))
        harness.client.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        harness.loop.advanceTime(by: .milliseconds(1900))
        #expect(harness.client.isActive)
        harness.loop.advanceTime(by: .milliseconds(200))
        #expect(!harness.client.isActive)
        #expect(harness.finished == [.drainTimeout])
    }

    @Test("a drain that begins after the handshake is the bridge's: it keeps going until the drain timeout")
    func drainAfterHandshake() throws {
        let harness = try SOCKSHarness(drainTimeout: .seconds(2))
        try harness.activate()
        try harness.send(Self.greeting + Self.connect5)
        try harness.connect()
        harness.client.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        harness.loop.advanceTime(by: .milliseconds(1900))
        #expect(harness.client.isActive)
        harness.loop.advanceTime(by: .milliseconds(200))
        #expect(harness.finished == [.drainTimeout])
    }
}

@Suite("SOCKS configuration")
struct SOCKSConfigurationTests {
    @Test("denied networks and unspecified addresses are not allowed; IPv4-mapped IPv6 counts as IPv4")
    func allows() throws {
        let socks = SOCKSConfiguration(denyDestinations: [try CIDR(parsing: "127.0.0.0/8"), try CIDR(parsing: "fd00::/8")])
        #expect(!socks.allows(address("127.0.0.1", 80)))
        #expect(!socks.allows(address("::ffff:127.0.0.1", 80)))
        #expect(!socks.allows(address("fd12::1", 80)))
        #expect(!socks.allows(address("0.0.0.0", 80)))
        #expect(!socks.allows(address("0.1.2.3", 80)))
        #expect(!socks.allows(address("::", 80)))
        #expect(!socks.allows(address("::ffff:0.0.0.0", 80)))
        #expect(socks.allows(address("10.0.0.1", 80)))
        #expect(socks.allows(address("::1", 80)))
        #expect(SOCKSConfiguration().allows(address("127.0.0.1", 1)))
    }

    @Test("an open proxy is a non-loopback listener with neither --allow nor --users")
    func openProxy() throws {
        let open = SOCKSConfiguration()
        let none = AdmissionPolicy()
        #expect(SOCKSStarter.isOpenProxy(open, listen: Endpoint(host: "0.0.0.0", port: 1080), admission: none))
        #expect(SOCKSStarter.isOpenProxy(open, listen: Endpoint(host: "::", port: 1080), admission: none))
        #expect(SOCKSStarter.isOpenProxy(open, listen: Endpoint(host: "proxy.example", port: 1080), admission: none))
        #expect(!SOCKSStarter.isOpenProxy(open, listen: Endpoint(host: "127.0.0.1", port: 1080), admission: none))
        #expect(!SOCKSStarter.isOpenProxy(open, listen: Endpoint(host: "127.1.2.3", port: 1080), admission: none))
        #expect(!SOCKSStarter.isOpenProxy(open, listen: Endpoint(host: "::1", port: 1080), admission: none))
        #expect(!SOCKSStarter.isOpenProxy(open, listen: Endpoint(host: "localhost", port: 1080), admission: none))
        let allow = AdmissionPolicy(allow: [try CIDR(parsing: "10.0.0.0/8")])
        #expect(!SOCKSStarter.isOpenProxy(open, listen: Endpoint(host: "0.0.0.0", port: 1080), admission: allow))
        #expect(!SOCKSStarter.isOpenProxy(.init(users: testUsers), listen: Endpoint(host: "0.0.0.0", port: 1080), admission: none))
    }
}
