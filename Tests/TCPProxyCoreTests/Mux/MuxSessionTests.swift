import Logging
import NIOCore
import NIOEmbedded
import Testing

@testable import TCPProxyCore

/// The tunnel side of a demux on `EmbeddedChannel`: frame reassembly, keep-alive, limits and protocol errors.
@Suite("Mux session")
struct MuxSessionTests {
    /// A demux session in an active `EmbeddedChannel`.
    struct Harness {
        let channel: EmbeddedChannel
        let session: MuxSession

        init(configure: (inout MuxConfiguration) -> Void = { _ in }) throws {
            var configuration = MuxConfiguration(listen: Endpoint(host: "127.0.0.1", port: 0))
            configuration.target = Endpoint(host: "127.0.0.1", port: 9)
            configure(&configuration)
            let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
            self.channel = EmbeddedChannel()
            self.session = MuxSession(
                role: .demux,
                channel: self.channel,
                environment: MuxStreamEnvironment(configuration: configuration, logger: logger)
            )
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
        ("an oversized DATA header", [1, 0, 0, 0, 1, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF], .frameTooLarge),
        ("DATA on a stream never opened", [1, 0, 0, 0, 7, 0, 0, 0, 0, 0, 1, 0x41], .protocolError),
        ("an OPEN acknowledgement sent to the demux", [1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0], .protocolError),
    ]

    @Test("protocol violations get GOAWAY with their code and the tunnel closes, even fed byte by byte", arguments: 0..<violations.count)
    func violation(index: Int) throws {
        let (_, bytes, code) = Self.violations[index]
        let harness = try Harness()
        try harness.receive(ByteBuffer(bytes: bytes), chunk: 1)
        #expect(try harness.sent() == [MuxFrame(streamID: 0, payload: .goAway(code))])
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
