import Logging
import MetricsTestKit
import NIOCore
import NIOEmbedded
import Testing

@testable import TCPProxyCore

/// The tunnel side of a demux on `EmbeddedChannel`: frame reassembly, keep-alive, limits and protocol errors.
@Suite("Mux session")
struct MuxSessionTests {
    /// A session (a demux's unless told) in an active `EmbeddedChannel`.
    struct Harness {
        let channel: EmbeddedChannel
        let session: MuxSession

        init(
            role: MuxSession.Role = .demux,
            metrics: ProxyMetrics? = nil,
            configure: (inout MuxConfiguration) -> Void = { _ in },
            answered: (() -> Void)? = nil
        ) throws {
            var configuration = MuxConfiguration(listen: Endpoint(host: "127.0.0.1", port: 0))
            configuration.target = Endpoint(host: "127.0.0.1", port: 9)
            configure(&configuration)
            let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
            self.channel = EmbeddedChannel()
            self.session = MuxSession(
                role: role,
                channel: self.channel,
                environment: MuxStreamEnvironment(
                    configuration: configuration,
                    logger: logger,
                    metrics: metrics,
                    target: ConnectTarget(configuration.target!)
                )
            )
            self.session.peerAnswered = answered
            try self.channel.pipeline.syncOperations.addHandler(MuxTunnelHandler(session: self.session))
            try self.channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 7000)).wait()
        }

        /// Feeds `frames`' bytes in pieces of `chunk` bytes.
        func receive(_ frames: [MuxFrame], chunk: Int = .max) throws {
            var bytes = ByteBuffer()
            for frame in frames { bytes.writeMuxFrame(frame) }
            try self.receive(bytes, chunk: chunk)
        }

        func receive(_ bytes: ByteBuffer, chunk: Int = .max) throws {
            var bytes = bytes
            while bytes.readableBytes > 0, self.channel.isActive {
                try self.channel.writeInbound(bytes.readSlice(length: min(chunk, bytes.readableBytes))!)
            }
        }

        /// Every frame written to the tunnel so far.
        func sent() throws -> [MuxFrame] {
            var all = ByteBuffer()
            while var buffer = try self.channel.readOutbound(as: ByteBuffer.self) { all.writeBuffer(&buffer) }
            var frames: [MuxFrame] = []
            while let frame = try all.readMuxFrame() { frames.append(frame) }
            #expect(all.readableBytes == 0)
            return frames
        }
    }

    @Test("frames cut at every byte are reassembled: each PING is answered with its PONG", arguments: [1, 2, 5, 11, 12, .max])
    func reassembly(chunk: Int) throws {
        let harness = try Harness()
        let pings = (1...5).map { MuxFrame(streamID: 0, payload: .ping(UInt64($0) << 40 | 7)) }
        try harness.receive(pings, chunk: chunk)
        #expect(try harness.sent() == (1...5).map { MuxFrame(streamID: 0, payload: .pong(UInt64($0) << 40 | 7)) })
        #expect(harness.channel.isActive)
    }

    @Test("a chunk is sent as DATA frames of at most the maximum payload, bytes in order", arguments: [0, 1, 16384, 16385, 40_000])
    func sendData(size: Int) throws {
        let harness = try Harness()
        let payload = ByteBuffer(bytes: (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 13) })
        harness.session.sendData(streamID: 5, payload)
        harness.session.flushIfNeeded()
        let frames = try harness.sent()
        var joined = ByteBuffer()
        for frame in frames {
            guard case .data(var bytes) = frame.payload else {
                Issue.record("not DATA: \(frame)")
                return
            }
            #expect(frame.streamID == 5)
            #expect(bytes.readableBytes <= MuxFrame.defaultMaximumPayload)
            joined.writeBuffer(&bytes)
        }
        #expect(frames.count == max(1, (size + 16383) / 16384))
        #expect(joined == payload)
    }

    @Test("DATA for a stream whose socket is behind is copied, and so are pieces under a sixteenth of the read buffer")
    func copyPolicy() {
        #expect(MuxSession.shouldCopy(pieceOf: 16 * 1024, readCapacity: 256 * 1024, localBacklog: 1), "a slow socket's bytes wait")
        #expect(MuxSession.shouldCopy(pieceOf: 1, readCapacity: 256 * 1024))
        #expect(MuxSession.shouldCopy(pieceOf: 16 * 1024 - 1, readCapacity: 256 * 1024))
        #expect(!MuxSession.shouldCopy(pieceOf: 16 * 1024, readCapacity: 256 * 1024), "a full frame in a full-size read")
        #expect(!MuxSession.shouldCopy(pieceOf: 100, readCapacity: 1024))
        #expect(MuxSession.shouldCopy(pieceOf: 63, readCapacity: 1024))
        for capacity in [1024, 65536, 262_144] {
            for length in [1, 100, 4096, 16384] where !MuxSession.shouldCopy(pieceOf: length, readCapacity: capacity) {
                #expect(capacity <= 16 * length, "a \(length)-byte slice keeps \(capacity) bytes alive")
            }
        }
    }

    @Test("a stream's local socket reads in one go what a bridge reads in one wakeup")
    func localReadSize() {
        #expect(MuxStreamChannelOptions.maximumRead(highWaterMark: 64 * 1024, readsPerWakeup: 4) == 256 * 1024)
        #expect(MuxStreamChannelOptions.maximumRead(highWaterMark: 10 * 1024 * 1024, readsPerWakeup: 4) == 256 * 1024)
        #expect(MuxStreamChannelOptions.maximumRead(highWaterMark: 16 * 1024, readsPerWakeup: 4) == 64 * 1024)
        #expect(MuxStreamChannelOptions.maximumRead(highWaterMark: 512, readsPerWakeup: 4) == 4 * 1024)
        #expect(MuxStreamChannelOptions.maximumRead(highWaterMark: 64 * 1024, readsPerWakeup: 0) == 64 * 1024)
    }

    @Test("the demux sends PING on its interval and closes a tunnel whose peer never answers")
    func keepAlive() throws {
        let harness = try Harness { configuration in
            configuration.pingInterval = .seconds(1)
            configuration.pingTimeout = .seconds(2)
        }
        harness.channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        guard case .ping(let value)? = try harness.sent().first?.payload else {
            Issue.record("no PING")
            return
        }
        try harness.receive([MuxFrame(streamID: 0, payload: .pong(value))])
        harness.channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        #expect(try harness.sent().count == 1, "a new PING once the last was answered")
        harness.channel.embeddedEventLoop.advanceTime(by: .seconds(3))
        #expect(try harness.sent() == [MuxFrame(streamID: 0, payload: .goAway(.pingTimeout))])
        #expect(!harness.channel.isActive)
    }

    /// Bytes that break the protocol, and the GOAWAY code each earns.
    static let violations: [(String, [UInt8], MuxErrorCode)] = [
        ("text", Array("GET / HTTP/1.1\r\n\r\n".utf8), .protocolError),
        ("an oversized DATA header", [2, 0, 0, 0, 1, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF], .frameTooLarge),
        ("DATA on a stream never opened", [2, 0, 0, 0, 7, 0, 0, 0, 0, 0, 1, 0x41], .protocolError),
        ("an OPEN acknowledgement sent to the demux", [2, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0], .protocolError),
        ("an OPEN with an even stream id (the mux opens odd ones)", [2, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0], .protocolError),
    ]

    @Test(
        "an OPEN target that is not HOST:PORT in printable ASCII is refused for its stream; the tunnel stays up",
        arguments: [Array("abc".utf8), Array("127.0.0.1:99999".utf8), Array(":80".utf8), Array("a:0".utf8), Array("a b:80".utf8), [0xFF, 0xFE, 0x3A, 0x38, 0x30]]
    )
    func badOpenTarget(target: [UInt8]) throws {
        let harness = try Harness { $0.allowOpenTarget = true }
        var bytes = ByteBuffer(bytes: [2, 0, 0, 0, 1, 1, 0] + [0, 0, 0, UInt8(target.count)] + target)
        bytes.writeMuxFrame(MuxFrame(streamID: 0, payload: .ping(7)))
        try harness.receive(bytes)
        #expect(try harness.sent() == [MuxFrame(streamID: 1, payload: .reset(.targetNotAllowed)), MuxFrame(streamID: 0, payload: .pong(7))])
        #expect(harness.channel.isActive)
    }

    @Test("protocol violations get GOAWAY with their code and the tunnel closes, even fed byte by byte", arguments: 0..<violations.count)
    func violation(index: Int) throws {
        let (_, bytes, code) = Self.violations[index]
        let harness = try Harness()
        try harness.receive(ByteBuffer(bytes: bytes), chunk: 1)
        #expect(try harness.sent() == [MuxFrame(streamID: 0, payload: .goAway(code))])
        #expect(!harness.channel.isActive)
    }

    @Test("after OPEN 5, a lower id never opened counts as ended (its frames are dropped, as in HTTP/2); an even id is a protocol error")
    func idsBelowTheHighest() throws {
        let harness = try Harness { $0.maximumStreams = 0 }
        try harness.receive([
            MuxFrame(streamID: 5, payload: .open(target: nil)),
            MuxFrame(streamID: 3, payload: .windowUpdate(100)),
            MuxFrame(streamID: 0, payload: .ping(1)),
        ])
        #expect(try harness.sent() == [MuxFrame(streamID: 5, payload: .reset(.refusedStream)), MuxFrame(streamID: 0, payload: .pong(1))])
        #expect(harness.channel.isActive)
        try harness.receive([MuxFrame(streamID: 2, payload: .windowUpdate(100))])
        #expect(try harness.sent() == [MuxFrame(streamID: 0, payload: .goAway(.protocolError))])
        #expect(!harness.channel.isActive)
    }

    @Test("OPEN that reuses a stream id is a protocol error")
    func reusedID() throws {
        let harness = try Harness { $0.maximumStreams = 0 }
        try harness.receive([MuxFrame(streamID: 3, payload: .open(target: nil)), MuxFrame(streamID: 3, payload: .open(target: nil))])
        #expect(try harness.sent() == [
            MuxFrame(streamID: 3, payload: .reset(.refusedStream)),
            MuxFrame(streamID: 0, payload: .goAway(.protocolError)),
        ])
    }

    @Test("OPEN over the stream limit is refused with RESET; the tunnel stays up")
    func streamLimit() throws {
        let harness = try Harness { $0.maximumStreams = 0 }
        try harness.receive([MuxFrame(streamID: 1, payload: .open(target: nil))])
        #expect(try harness.sent() == [MuxFrame(streamID: 1, payload: .reset(.refusedStream))])
        #expect(harness.channel.isActive)
    }

    @Test("OPEN naming a target is refused unless --allow-open-target")
    func openTarget() throws {
        let harness = try Harness()
        try harness.receive([MuxFrame(streamID: 1, payload: .open(target: "10.0.0.1:22"))])
        #expect(try harness.sent() == [MuxFrame(streamID: 1, payload: .reset(.targetNotAllowed))])
        #expect(harness.channel.isActive)
    }

    @Test("GOAWAY from the peer closes the tunnel; late frames for ended streams are ignored")
    func goAway() throws {
        let harness = try Harness { $0.maximumStreams = 0 }
        try harness.receive([MuxFrame(streamID: 1, payload: .open(target: nil))])
        _ = try harness.sent()
        try harness.receive([
            MuxFrame(streamID: 1, payload: .data(ByteBuffer(string: "late"))),
            MuxFrame(streamID: 1, payload: .eof),
            MuxFrame(streamID: 1, payload: .windowUpdate(10)),
        ])
        #expect(try harness.sent().isEmpty)
        #expect(harness.channel.isActive)
        try harness.receive([MuxFrame(streamID: 0, payload: .goAway(.protocolError))])
        #expect(!harness.channel.isActive)
    }
}

@Suite("Mux session limits")
struct MuxSessionLimitTests {
    @Test("a peer that floods PINGs while not reading its tunnel is cut off: the write buffer stays bounded")
    func pingFlood() throws {
        let harness = try MuxSessionTests.Harness()
        harness.channel.isWritable = false
        harness.channel.pipeline.fireChannelWritabilityChanged()
        var flood = ByteBuffer()
        for value in 0..<UInt64(MuxSession.maximumControlBacklog + 10) {
            flood.writeMuxFrame(MuxFrame(streamID: 0, payload: .ping(value)))
        }
        try harness.receive(flood)
        #expect(!harness.channel.isActive)
    }
}

@Suite("Mux session metrics and admission")
struct MuxSessionMetricsTests {
    static let base = [("listener", "demux"), ("target", "127.0.0.1:9")]

    func make() -> (ProxyMetrics, TestMetrics) {
        let factory = TestMetrics()
        return (ProxyMetrics(listener: "demux", target: "127.0.0.1:9", factory: factory, tunnelMetrics: true), factory)
    }

    func counter(_ factory: TestMetrics, _ name: String, _ extra: (String, String)? = nil) throws -> Int64 {
        try factory.expectCounter(name, Self.base + (extra.map { [$0] } ?? [])).totalValue
    }

    @Test("the mux sends PING as the tunnel connects; the demux's first frame is its answer, reported once, and only then is the tunnel counted up")
    func muxTunnelUpOnAnswer() throws {
        let (metrics, factory) = self.make()
        var answers = 0
        let harness = try MuxSessionTests.Harness(role: .mux, metrics: metrics, answered: { answers += 1 })
        guard case .ping(let value)? = try harness.sent().first?.payload else {
            Issue.record("no PING as the tunnel connected")
            return
        }
        #expect(answers == 0)
        #expect(try factory.expectMeter("tcpproxy_tunnels_active", Self.base).lastValue ?? 0 == 0, "not up on the TCP connect")
        #expect(try self.counter(factory, "tcpproxy_tunnel_connects_total") == 0)
        try harness.receive([MuxFrame(streamID: 0, payload: .pong(value)), MuxFrame(streamID: 0, payload: .ping(1))])
        #expect(answers == 1, "reported once")
        #expect(try factory.expectMeter("tcpproxy_tunnels_active", Self.base).lastValue == 1)
        #expect(try self.counter(factory, "tcpproxy_tunnel_connects_total") == 1)
        try harness.channel.close().wait()
        #expect(try factory.expectMeter("tcpproxy_tunnels_active", Self.base).lastValue == 0)
    }

    @Test(
        "a mux tunnel whose peer never answers, or answers with a protocol error, is never counted up or closed",
        arguments: ["silence", "garbage", "GOAWAY"]
    )
    func muxTunnelNeverAnswered(peer: String) throws {
        let (metrics, factory) = self.make()
        var answers = 0
        let harness = try MuxSessionTests.Harness(role: .mux, metrics: metrics, answered: { answers += 1 })
        switch peer {
        case "garbage": try harness.receive(ByteBuffer(bytes: Array("SSH-2.0-OpenSSH_9.6\r\n".utf8)))
        case "GOAWAY": try harness.receive([MuxFrame(streamID: 0, payload: .goAway(.noError))])
        default: try harness.channel.close().wait()
        }
        #expect(!harness.channel.isActive)
        #expect(answers == 0)
        #expect(try factory.expectMeter("tcpproxy_tunnels_active", Self.base).lastValue ?? 0 == 0)
        #expect(try self.counter(factory, "tcpproxy_tunnel_connects_total") == 0)
        for reason in MuxTunnelCloseReason.allCases {
            #expect(try self.counter(factory, "tcpproxy_tunnels_closed_total", ("reason", reason.rawValue)) == 0, "\(reason)")
        }
    }

    @Test("a tunnel that comes up and is closed by a protocol error: up, connected once, closed protocolError")
    func protocolErrorCounted() throws {
        let (metrics, factory) = self.make()
        let harness = try MuxSessionTests.Harness(metrics: metrics)
        let active = try factory.expectMeter("tcpproxy_tunnels_active", Self.base)
        #expect(active.lastValue == 1)
        #expect(try self.counter(factory, "tcpproxy_tunnel_connects_total") == 1)
        try harness.receive(ByteBuffer(bytes: [9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]))
        #expect(!harness.channel.isActive)
        #expect(active.lastValue == 0)
        #expect(try self.counter(factory, "tcpproxy_tunnels_closed_total", ("reason", "protocolError")) == 1)
        #expect(try self.counter(factory, "tcpproxy_tunnels_closed_total", ("reason", "connectionLost")) == 0)
    }

    @Test(
        "why a tunnel closed is counted by reason",
        arguments: [
            ("the peer's GOAWAY noError", MuxTunnelCloseReason.shutdown),
            ("the peer's GOAWAY pingTimeout", .pingTimeout),
            ("the peer's GOAWAY flowControlError", .protocolError),
            ("our PING unanswered", .pingTimeout),
            ("the socket closing", .connectionLost),
            ("our drain", .shutdown),
        ]
    )
    func closeReasons(how: String, reason: MuxTunnelCloseReason) throws {
        let (metrics, factory) = self.make()
        let harness = try MuxSessionTests.Harness(metrics: metrics) { configuration in
            configuration.pingInterval = .seconds(1)
            configuration.pingTimeout = .seconds(1)
        }
        switch how {
        case "the peer's GOAWAY noError": try harness.receive([MuxFrame(streamID: 0, payload: .goAway(.noError))])
        case "the peer's GOAWAY pingTimeout": try harness.receive([MuxFrame(streamID: 0, payload: .goAway(.pingTimeout))])
        case "the peer's GOAWAY flowControlError":
            try harness.receive([MuxFrame(streamID: 0, payload: .goAway(.flowControlError))])
        case "our PING unanswered": harness.channel.embeddedEventLoop.advanceTime(by: .seconds(3))
        case "the socket closing": try harness.channel.close().wait()
        default: harness.session.drain()
        }
        #expect(!harness.channel.isActive, "\(how) closes the tunnel")
        for other in MuxTunnelCloseReason.allCases {
            let count = try self.counter(factory, "tcpproxy_tunnels_closed_total", ("reason", other.rawValue))
            #expect(count == (other == reason ? 1 : 0), "\(how): \(other)")
        }
        #expect(try factory.expectMeter("tcpproxy_tunnels_active", Self.base).lastValue == 0)
    }

    @Test("demux --max-connections: an OPEN over the limit gets RESET refusedStream, counted; the tunnel stays up")
    func maxConnections() throws {
        let (metrics, factory) = self.make()
        let harness = try MuxSessionTests.Harness(metrics: metrics) { $0.admission.maxConnections = 0 }
        try harness.receive([MuxFrame(streamID: 1, payload: .open(target: nil)), MuxFrame(streamID: 3, payload: .open(target: nil))])
        #expect(
            try harness.sent() == [
                MuxFrame(streamID: 1, payload: .reset(.refusedStream)), MuxFrame(streamID: 3, payload: .reset(.refusedStream)),
            ]
        )
        #expect(harness.channel.isActive)
        #expect(try self.counter(factory, "tcpproxy_connections_accepted_total") == 2)
        #expect(try self.counter(factory, "tcpproxy_connections_rejected_total", ("reason", "limitReached")) == 2)
        #expect(try self.counter(factory, "tcpproxy_stream_resets_sent_total", ("code", "refusedStream")) == 2)
        #expect(try self.counter(factory, "tcpproxy_streams_opened_total") == 0)
        #expect(harness.session.environment.streams.count == 0, "a refused stream claims no slot")
    }

    @Test("RESET frames received are counted by code; codes a RESET does not carry count as other")
    func resetsReceived() throws {
        let (metrics, factory) = self.make()
        let harness = try MuxSessionTests.Harness(metrics: metrics) { $0.maximumStreams = 0 }
        try harness.receive([
            MuxFrame(streamID: 1, payload: .open(target: nil)),
            MuxFrame(streamID: 1, payload: .reset(.connectionReset)),
            MuxFrame(streamID: 1, payload: .reset(MuxErrorCode(rawValue: 99))),
        ])
        #expect(try self.counter(factory, "tcpproxy_stream_resets_received_total", ("code", "connectionReset")) == 1)
        #expect(try self.counter(factory, "tcpproxy_stream_resets_received_total", ("code", "other")) == 1)
    }
}
