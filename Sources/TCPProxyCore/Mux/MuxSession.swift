import Logging
import NIOCore
import NIOExtras

/// One tunnel connection at either end: it reads frames and hands them to their streams, writes the
/// streams' frames, keeps the tunnel alive with PING, and enforces the protocol's limits.
///
/// A frame that can never be valid, DATA beyond a stream's credit or an OPEN that reuses an id is a
/// protocol error: GOAWAY with its code, then the tunnel closes and every stream on it is reset. Memory is
/// bounded: at most one frame (up to the maximum payload) plus one read waits for parsing, and what streams
/// hold is bounded by their windows.
final class MuxSession {
    typealias Role = MuxStreamStateMachine.Role

    let role: Role
    let channel: Channel
    let environment: MuxStreamEnvironment
    private var logger: Logger
    private var configuration: MuxConfiguration { self.environment.configuration }
    var context: ChannelHandlerContext?

    private var streams: [UInt32: MuxStream] = [:]
    /// Mux: the id of the next stream it opens (odd, increasing, never reused on this tunnel).
    private var nextStreamID: UInt32 = 1
    /// Demux: the highest id the peer has opened.
    private var highestPeerStreamID: UInt32 = 0
    /// Bytes of a frame not yet complete.
    private var cumulation: ByteBuffer?
    private var flushNeeded = false
    /// Streams written to during this read burst, to flush at its end.
    private var streamsToFlush: [MuxStream] = []
    private(set) var isClosed = false
    /// No new streams (GOAWAY sent or received); the tunnel closes when its last stream ends.
    private(set) var isDraining = false
    private var pingTimer: Scheduled<Void>?
    private var outstandingPing: (value: UInt64, sentAt: NIODeadline)?
    private var pingCounter: UInt64 = 0
    /// Called once, when the tunnel has closed.
    var closed: (() -> Void)?
    /// Mux: called when a stream has ended, so a client waiting for a free slot can be opened.
    var streamRemoved: (() -> Void)?

    init(role: Role, channel: Channel, environment: MuxStreamEnvironment) {
        self.role = role
        self.channel = channel
        self.environment = environment
        var logger = environment.logger
        logger[metadataKey: "tunnel.peer"] = "\(channel.remoteAddress.logDescription)"
        self.logger = logger
    }

    var isWritable: Bool { !self.isClosed && self.channel.isWritable }
    var streamCount: Int { self.streams.count }
    /// Mux: whether a new stream may be opened here.
    var canOpenStream: Bool {
        !self.isClosed && !self.isDraining && self.streams.count < self.configuration.maximumStreams
    }
    var peerDescription: String { self.channel.remoteAddress.logDescription }

    // MARK: Lifecycle

    /// The tunnel is connected: start the keep-alive.
    func activate() {
        self.schedulePing()
    }

    /// The tunnel's socket closed: every stream on it is reset.
    func tunnelClosed() {
        guard !self.isClosed else { return }
        self.isClosed = true
        self.pingTimer?.cancel()
        self.pingTimer = nil
        self.cumulation = nil
        for stream in Array(self.streams.values) {
            stream.tunnelClosed()
        }
        self.streamRemoved = nil
        self.closed?()
        self.closed = nil
    }

    /// Sends GOAWAY with `code` and closes the tunnel.
    func close(goAway code: MuxErrorCode) {
        guard !self.isClosed else { return }
        self.send(MuxFrame(streamID: 0, payload: .goAway(code)))
        self.flushIfNeeded()
        self.channel.close(promise: nil)
    }

    /// Stop taking new streams; close the tunnel once the open ones have ended.
    func drain() {
        guard !self.isClosed, !self.isDraining else { return }
        self.isDraining = true
        self.send(MuxFrame(streamID: 0, payload: .goAway(.noError)))
        self.flushIfNeeded()
        for stream in self.streams.values { stream.quiesceRequested() }
        if self.streams.isEmpty { self.channel.close(promise: nil) }
    }

    // MARK: Streams

    /// Mux: opens `stream` on this tunnel.
    func openStream(_ stream: MuxStream) {
        let id = self.nextStreamID
        self.nextStreamID &+= 2
        if self.nextStreamID >= UInt32.max - 2 {
            // The id space is used up: new streams go to a fresh tunnel.
            self.isDraining = true
        }
        self.streams[id] = stream
        stream.open(on: self, streamID: id)
    }

    func removeStream(_ stream: MuxStream) {
        guard self.streams[stream.streamID] === stream else { return }
        self.streams[stream.streamID] = nil
        if self.isDraining && self.streams.isEmpty && !self.isClosed {
            self.channel.close(promise: nil)
        } else {
            self.streamRemoved?()
        }
    }

    func needsLocalFlush(_ stream: MuxStream) {
        self.streamsToFlush.append(stream)
    }

    // MARK: Writing frames

    /// Control frames written while the tunnel was not writable; see ``maximumControlBacklog``.
    private var controlBacklog = 0
    /// A peer that makes us answer (PING, refused OPENs) without reading the answers could grow our write
    /// buffer without end: past this many control frames queued behind a full tunnel, it is cut off.
    static let maximumControlBacklog = 4096

    /// Writes a control frame (flushed by ``flushIfNeeded()``).
    func send(_ frame: MuxFrame) {
        guard !self.isClosed, let context else { return }
        if !self.channel.isWritable, frame.type != .goAway {
            self.controlBacklog += 1
            if self.controlBacklog > Self.maximumControlBacklog {
                self.logger.warning("tunnel peer does not read, closing", metadata: ["frames.queued": "\(self.controlBacklog)"])
                self.channel.close(promise: nil)
                return
            }
        }
        var buffer = context.channel.allocator.buffer(capacity: MuxFrame.headerSize + 8)
        buffer.writeMuxFrame(frame)
        context.write(NIOAny(buffer), promise: nil)
        self.flushNeeded = true
    }

    /// Writes `payload` as DATA frames without copying it: the headers of all its frames go into one small
    /// buffer, and each frame is written as a slice of that buffer followed by a slice of the payload
    /// (NIO sends them with one `writev`).
    func sendData(streamID: UInt32, _ payload: ByteBuffer) {
        guard !self.isClosed, let context else { return }
        let maximum = self.configuration.maximumPayload
        let frames = max(1, (payload.readableBytes + maximum - 1) / maximum)
        var headers = context.channel.allocator.buffer(capacity: frames * MuxFrame.headerSize)
        var payload = payload
        repeat {
            let chunk = payload.readSlice(length: min(payload.readableBytes, maximum))!
            let start = headers.writerIndex
            headers.writeMultipleIntegers(
                MuxFrame.version, streamID, MuxFrame.FrameType.data.rawValue, UInt8(0), UInt32(chunk.readableBytes)
            )
            context.write(NIOAny(headers.getSlice(at: start, length: MuxFrame.headerSize)!), promise: nil)
            context.write(NIOAny(chunk), promise: nil)
        } while payload.readableBytes > 0
        self.flushNeeded = true
    }

    func flushIfNeeded() {
        guard self.flushNeeded, let context else { return }
        self.flushNeeded = false
        context.flush()
    }

    // MARK: Reading frames

    /// Bytes arrived on the tunnel.
    ///
    /// Frames are sliced out of the read buffer without copying. Only a frame cut by the end of a read is
    /// copied: its start goes into a small buffer of its own, which takes just the bytes that complete it
    /// from the next read (appending whole reads to one buffer would copy everything, and grow it).
    func received(_ buffer: ByteBuffer) {
        guard !self.isClosed else { return }
        var buffer = buffer
        let maximumPayload = self.configuration.maximumPayload
        do {
            if var partial = self.cumulation {
                self.cumulation = nil
                if partial.readableBytes < MuxFrame.headerSize {
                    var head = buffer.readSlice(length: min(MuxFrame.headerSize - partial.readableBytes, buffer.readableBytes))!
                    partial.writeBuffer(&head)
                }
                if partial.readableBytes >= MuxFrame.headerSize {
                    // An oversized length is refused by the parser from the header: never wait for it.
                    let length = Int(partial.getInteger(at: partial.readerIndex + 7, as: UInt32.self)!)
                    let total = MuxFrame.headerSize + min(length, maximumPayload + 1)
                    var rest = buffer.readSlice(length: max(0, min(total - partial.readableBytes, buffer.readableBytes)))!
                    partial.writeBuffer(&rest)
                }
                if let frame = try partial.readMuxFrame(maximumPayload: maximumPayload) {
                    try self.handle(frame)
                } else {
                    self.cumulation = partial
                    return
                }
            }
            while !self.isClosed, let frame = try buffer.readMuxFrame(maximumPayload: maximumPayload) {
                try self.handle(frame)
            }
        } catch let error as MuxProtocolError {
            self.protocolError(error)
            return
        } catch {
            self.protocolError(.streamViolation("\(error)"))
            return
        }
        if buffer.readableBytes > 0 && !self.isClosed {
            var partial = self.channel.allocator.buffer(capacity: MuxFrame.headerSize + maximumPayload)
            partial.writeBuffer(&buffer)
            self.cumulation = partial
        }
    }

    /// A read burst ended: flush what went to local sockets and to the tunnel.
    func readComplete() {
        let streams = self.streamsToFlush
        self.streamsToFlush.removeAll(keepingCapacity: true)
        for stream in streams { stream.flushLocal() }
        self.flushIfNeeded()
    }

    func writabilityChanged() {
        guard self.isWritable else { return }
        self.controlBacklog = 0
        for stream in Array(self.streams.values) { stream.tunnelWritable() }
    }

    private func handle(_ frame: MuxFrame) throws {
        let id = frame.streamID
        switch frame.payload {
        case .data(let bytes):
            try self.stream(id)?.received(bytes)
        case .open(let target):
            try self.peerOpened(id, target: target)
        case .openAcknowledged:
            guard self.role == .mux else { throw MuxProtocolError.streamViolation("OPEN acknowledgement sent to the demux") }
            try self.stream(id)?.openAcknowledged()
        case .eof:
            try self.stream(id)?.remoteEOF()
        case .reset(let code):
            try self.stream(id)?.remoteReset(code)
        case .windowUpdate(let increment):
            try self.stream(id)?.windowUpdate(increment)
        case .ping(let value):
            self.send(MuxFrame(streamID: 0, payload: .pong(value)))
        case .pong(let value):
            if self.outstandingPing?.value == value { self.outstandingPing = nil }
        case .goAway(let code):
            self.logger.info("tunnel peer going away", metadata: ["code": "\(code)"])
            if code == .noError {
                self.isDraining = true
                if self.streams.isEmpty { self.channel.close(promise: nil) }
            } else {
                self.channel.close(promise: nil)
            }
        }
    }

    /// The stream with this id, `nil` for a stream that already ended (its late frames are dropped).
    /// - Throws: for an id that was never opened.
    private func stream(_ id: UInt32) throws -> MuxStream? {
        if let stream = self.streams[id] { return stream }
        let known = self.role == .mux ? id < self.nextStreamID : id <= self.highestPeerStreamID
        guard known else { throw MuxProtocolError.streamViolation("frame for stream \(id), which was never opened") }
        return nil
    }

    /// Demux: OPEN arrived.
    private func peerOpened(_ id: UInt32, target: String?) throws {
        guard self.role == .demux else { throw MuxProtocolError.streamViolation("OPEN sent to the mux") }
        guard id > self.highestPeerStreamID else {
            throw MuxProtocolError.streamViolation("OPEN reuses stream id \(id)")
        }
        self.highestPeerStreamID = id
        guard !self.isDraining, self.streams.count < self.configuration.maximumStreams else {
            self.logger.info("stream refused", metadata: ["stream.id": "\(id)", "streams": "\(self.streams.count)"])
            self.send(MuxFrame(streamID: id, payload: .reset(.refusedStream)))
            return
        }
        var connectTarget = self.environment.target
        if let target {
            guard self.configuration.allowOpenTarget, let endpoint = try? Endpoint(parsing: target) else {
                self.logger.info("stream refused", metadata: ["stream.id": "\(id)", "target": "\(target)"])
                self.send(MuxFrame(streamID: id, payload: .reset(.targetNotAllowed)))
                return
            }
            connectTarget = ConnectTarget(endpoint)
        }
        guard let connectTarget else {
            self.send(MuxFrame(streamID: id, payload: .reset(.targetNotAllowed)))
            return
        }
        self.environment.streams.claim()
        let stream = MuxStream(role: .demux, environment: self.environment, eventLoop: self.channel.eventLoop)
        self.streams[id] = stream
        stream.connect(on: self, streamID: id, connector: TCPServerConnector(target: connectTarget))
    }

    private func protocolError(_ error: MuxProtocolError) {
        self.logger.warning("tunnel protocol error", metadata: ["error": "\(error)", "code": "\(error.code)"])
        self.close(goAway: error.code)
    }

    // MARK: Keep-alive

    private func schedulePing() {
        self.pingTimer = self.channel.eventLoop.assumeIsolated().scheduleTask(in: self.configuration.pingInterval) {
            self.pingTick()
        }
    }

    private func pingTick() {
        self.pingTimer = nil
        guard !self.isClosed else { return }
        let now = self.channel.eventLoop.now
        if let outstanding = self.outstandingPing {
            if now - outstanding.sentAt >= self.configuration.pingTimeout {
                self.logger.warning("tunnel peer not answering", metadata: ["ping.timeout": "\(self.configuration.pingTimeout)"])
                self.close(goAway: .pingTimeout)
                return
            }
        } else {
            self.pingCounter &+= 1
            self.outstandingPing = (self.pingCounter, now)
            self.send(MuxFrame(streamID: 0, payload: .ping(self.pingCounter)))
            self.flushIfNeeded()
        }
        self.schedulePing()
    }
}

@available(*, unavailable)
extension MuxSession: Sendable {}

/// The handler in a tunnel channel: it passes bytes, writability and closes to its ``MuxSession``.
final class MuxTunnelHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let session: MuxSession

    init(session: MuxSession) {
        self.session = session
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.session.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.session.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        self.session.activate()
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.session.tunnelClosed()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.session.received(self.unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.session.readComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.session.writabilityChanged()
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            self.session.drain()
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        self.session.environment.logger.debug("tunnel error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension MuxTunnelHandler: Sendable {}
