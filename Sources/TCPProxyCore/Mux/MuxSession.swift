import Logging
import NIOCore
import NIOExtras

/// One tunnel connection at either end: it reads frames and hands them to their streams, writes the
/// streams' frames, keeps the tunnel alive with PING, and enforces the protocol's limits.
///
/// A frame that can never be valid, DATA beyond a stream's credit or an OPEN that reuses an id is a
/// protocol error: GOAWAY with its code, then the tunnel closes and every stream on it is reset. Memory is
/// bounded: DATA goes to its stream as it arrives, so at most a cut header or control frame (272 bytes)
/// waits for parsing, and what streams hold is bounded by their windows.
///
/// Frames written to the tunnel while handling reads are flushed once per event-loop tick, so the chunks
/// that many clients' reads produce in one tick leave in one `writev`.
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
    /// Cuts the tunnel's bytes into frames.
    private var parser: MuxFrameParser
    /// Demux: `--max-connections` for the streams peers open (`--allow` applies to the tunnel peers).
    private let streamAdmission: AdmissionPolicy
    private var flushNeeded = false
    /// A flush is queued to run after this tick's I/O (see ``scheduleFlush()``).
    private var flushScheduled = false
    /// Streams written to during this read burst, to flush at its end.
    private var streamsToFlush: [MuxStream] = []
    private(set) var isClosed = false
    /// The tunnel's socket became active.
    private var isActivated = false
    /// The tunnel was counted as up in the metrics: at the demux when it is accepted, at the mux when the
    /// demux has answered (``peerAnswered``).
    private var isCounted = false
    /// Why the tunnel is closing, once known; a close with none is ``MuxTunnelCloseReason/connectionLost``.
    private var closeReason: MuxTunnelCloseReason?
    /// No new streams (GOAWAY sent or received); the tunnel closes when its last stream ends.
    private(set) var isDraining = false
    private var pingTimer: Scheduled<Void>?
    private var outstandingPing: (value: UInt64, sentAt: NIODeadline)?
    private var pingCounter: UInt64 = 0
    /// Called once, when the tunnel has closed, with the reason.
    var closed: ((MuxTunnelCloseReason) -> Void)?
    /// Mux: called when a stream has ended, so a client waiting for a free slot can be opened.
    var streamRemoved: (() -> Void)?
    /// Mux: called once, after the first frame from the peer has been handled. A TCP connect alone does not
    /// show that a demux is there: a frozen one still completes handshakes from its backlog, and a relay in
    /// between (`ssh -L`, a load balancer) accepts and only then finds the demux unreachable. The mux sends
    /// a PING as the tunnel comes up, so a demux answers within one round trip.
    var peerAnswered: (() -> Void)?
    /// Mux: called once when the tunnel stops taking new streams on the far end's word or for want of ids (the
    /// demux's GOAWAY `noError`, or the id space used up); the streams on it run on to their end. New clients
    /// need another tunnel now, not when this one has closed.
    var stoppedOpening: (() -> Void)?

    init(role: Role, channel: Channel, environment: MuxStreamEnvironment) {
        self.role = role
        self.channel = channel
        self.environment = environment
        self.parser = MuxFrameParser(maximumPayload: environment.configuration.maximumPayload)
        self.streamAdmission = AdmissionPolicy(maxConnections: environment.configuration.admission.maxConnections)
        var logger = environment.logger
        // The mux makes its session before the tunnel connects: its peer is the demux it connects to.
        let peer = channel.remoteAddress.map { "\($0.logDescription)" } ?? environment.configuration.tunnel?.description
        logger[metadataKey: "tunnel.peer"] = "\(peer ?? "?")"
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

    /// The tunnel is connected: start the keep-alive. The mux asks the demux for its first answer at once.
    func activate() {
        guard !self.isActivated else { return }
        self.isActivated = true
        switch self.role {
        case .demux:
            self.countOpened()
        case .mux:
            self.sendPing()
            self.flushIfNeeded()
        }
        self.schedulePing()
    }

    private func countOpened() {
        self.isCounted = true
        self.environment.metrics?.tunnelOpened()
    }

    /// The tunnel's socket closed: every stream on it is reset.
    func tunnelClosed() {
        guard !self.isClosed else { return }
        self.isClosed = true
        self.pingTimer?.cancel()
        self.pingTimer = nil
        let reason = self.closeReason ?? .connectionLost
        if self.isCounted { self.environment.metrics?.tunnelClosed(reason) }
        for stream in Array(self.streams.values) {
            stream.tunnelClosed()
        }
        self.streamRemoved = nil
        self.peerAnswered = nil
        self.stoppedOpening = nil
        self.closed?(reason)
        self.closed = nil
    }

    /// Closes the tunnel's socket; `reason` is what the close is counted as (the first one given wins).
    private func closeChannel(_ reason: MuxTunnelCloseReason) {
        if self.closeReason == nil { self.closeReason = reason }
        self.channel.close(promise: nil)
    }

    /// Sends GOAWAY with `code` and closes the tunnel.
    func close(goAway code: MuxErrorCode) {
        guard !self.isClosed else { return }
        self.send(MuxFrame(streamID: 0, payload: .goAway(code)))
        self.flushIfNeeded()
        self.closeChannel(MuxTunnelCloseReason(goAway: code))
    }

    /// Stop taking new streams; close the tunnel once the open ones have ended.
    func drain() {
        guard !self.isClosed, !self.isDraining else { return }
        self.isDraining = true
        self.send(MuxFrame(streamID: 0, payload: .goAway(.noError)))
        self.flushIfNeeded()
        self.quiesceStreams()
        if self.streams.isEmpty { self.closeChannel(.shutdown) }
    }

    /// No new streams on this tunnel; the mux is told, so that it opens another.
    private func stopOpening() {
        guard !self.isDraining else { return }
        self.isDraining = true
        if let stoppedOpening = self.stoppedOpening {
            self.stoppedOpening = nil
            stoppedOpening()
        }
    }

    /// Gives every open stream the drain timeout.
    func quiesceStreams() {
        for stream in self.streams.values { stream.quiesceRequested() }
    }

    // MARK: Streams

    /// Mux: opens `stream` on this tunnel.
    func openStream(_ stream: MuxStream) {
        let id = self.nextStreamID
        self.nextStreamID &+= 2
        if self.nextStreamID >= UInt32.max - 2 {
            // The id space is used up: new streams go to a fresh tunnel.
            self.stopOpening()
        }
        self.streams[id] = stream
        self.environment.metrics?.streamOpened()
        stream.open(on: self, streamID: id)
    }

    func removeStream(_ stream: MuxStream) {
        guard self.streams[stream.streamID] === stream else { return }
        self.streams[stream.streamID] = nil
        self.environment.metrics?.streamClosed()
        if self.isDraining && self.streams.isEmpty && !self.isClosed {
            self.closeChannel(.shutdown)
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
                self.closeChannel(.peerNotReading)
                return
            }
        }
        if case .reset(let code) = frame.payload { self.environment.metrics?.streamReset(code, sent: true) }
        var buffer = context.channel.allocator.buffer(capacity: MuxFrame.headerSize + 8)
        buffer.writeMuxFrame(frame)
        context.write(NIOAny(buffer), promise: nil)
        self.flushNeeded = true
    }

    /// Writes `payload` as DATA frames without copying it: the headers of all its frames go into one small
    /// buffer, and each frame is written as a slice of that buffer followed by a slice of the payload
    /// (NIO sends them with one `writev`). The headers are all written before the first is sliced off, as
    /// writing to a buffer that slices already share would copy it.
    func sendData(streamID: UInt32, _ payload: ByteBuffer) {
        guard !self.isClosed, let context else { return }
        let maximum = self.configuration.maximumPayload
        let frames = max(1, (payload.readableBytes + maximum - 1) / maximum)
        var headers = context.channel.allocator.buffer(capacity: frames * MuxFrame.headerSize)
        var remaining = payload.readableBytes
        for _ in 0..<frames {
            let length = min(remaining, maximum)
            remaining -= length
            headers.writeMultipleIntegers(
                MuxFrame.version, streamID, MuxFrame.FrameType.data.rawValue, UInt8(0), UInt32(length)
            )
        }
        var payload = payload
        for _ in 0..<frames {
            context.write(NIOAny(headers.readSlice(length: MuxFrame.headerSize)!), promise: nil)
            context.write(NIOAny(payload.readSlice(length: min(payload.readableBytes, maximum))!), promise: nil)
        }
        self.flushNeeded = true
    }

    /// Flushes what was written to the tunnel, now.
    func flushIfNeeded() {
        guard self.flushNeeded, let context else { return }
        self.flushNeeded = false
        context.flush()
    }

    /// Flushes what was written to the tunnel once this event-loop tick's I/O has been handled: the event
    /// loop runs tasks after it has dispatched every ready socket, so the frames of all clients read in
    /// this tick leave together.
    func scheduleFlush() {
        guard self.flushNeeded, !self.flushScheduled, !self.isClosed else { return }
        self.flushScheduled = true
        self.channel.eventLoop.assumeIsolated().execute {
            self.flushScheduled = false
            self.flushIfNeeded()
        }
    }

    // MARK: Reading frames

    /// Bytes arrived on the tunnel.
    ///
    /// Frames are sliced out of the read buffer without copying, and the payload of a DATA frame goes to its
    /// stream as soon as any of it is there: a DATA frame cut by the end of a read costs nothing more than
    /// one that is whole. Only a cut header or control frame (a few bytes) waits in the parser.
    func received(_ buffer: ByteBuffer) {
        guard !self.isClosed else { return }
        var buffer = buffer
        let readCapacity = buffer.capacity
        do {
            while !self.isClosed, let event = try self.parser.next(&buffer) {
                switch event {
                case .frame(let frame):
                    try self.handle(frame)
                    if self.peerAnswered != nil { self.answered() }
                case .dataHeader(let id, let length):
                    try self.stream(id)?.dataFrameStarted(length: length)
                    if self.peerAnswered != nil { self.answered() }
                case .dataBytes(let id, let bytes):
                    guard let stream = self.streams[id] else { break }
                    if Self.shouldCopy(pieceOf: bytes.readableBytes, readCapacity: readCapacity, localBacklog: stream.unwrittenLocal) {
                        var copy = self.channel.allocator.buffer(capacity: bytes.readableBytes)
                        copy.writeImmutableBuffer(bytes)
                        stream.received(copy)
                    } else {
                        stream.received(bytes)
                    }
                }
            }
        } catch let error as MuxProtocolError {
            self.protocolError(error)
        } catch {
            self.protocolError(.streamViolation("\(error)"))
        }
    }

    /// Mux: the demux's first frame has been handled (one that made the tunnel close does not count).
    private func answered() {
        guard !self.isClosed, self.closeReason == nil, let answered = self.peerAnswered else { return }
        self.peerAnswered = nil
        self.countOpened()
        answered()
    }

    /// Whether a DATA piece goes to its stream as a copy rather than a slice of the tunnel read.
    ///
    /// A slice keeps its whole read buffer (up to 256 KiB) alive until the local socket has taken it. So a
    /// piece is copied when its stream's socket has not taken what it was given before (`localBacklog`: it
    /// is slow, and the piece will wait), or when it is under a sixteenth of the read buffer (small frames,
    /// a frame cut by a read). A stalled stream then pins at most the one tunnel read in which it stalled
    /// (the tunnel reads once per wakeup), next to the copies its window bounds, however the peer cuts its
    /// frames; full frames of bulk traffic to a socket that keeps up (16 KiB in 256 KiB reads) stay slices.
    static func shouldCopy(pieceOf length: Int, readCapacity: Int, localBacklog: Int = 0) -> Bool {
        localBacklog > 0 || length < readCapacity / 16
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
            // Not produced by the parser (it streams DATA), kept so the switch covers every frame.
            guard let stream = try self.stream(id) else { return }
            try stream.dataFrameStarted(length: bytes.readableBytes)
            if bytes.readableBytes > 0 { stream.received(bytes) }
        case .open(let target):
            try self.peerOpened(id, target: target)
        case .openAcknowledged:
            guard self.role == .mux else { throw MuxProtocolError.streamViolation("OPEN acknowledgement sent to the demux") }
            try self.stream(id)?.openAcknowledged()
        case .eof:
            try self.stream(id)?.remoteEOF()
        case .reset(let code):
            self.environment.metrics?.streamReset(code, sent: false)
            try self.stream(id)?.remoteReset(code)
        case .windowUpdate(let increment):
            try self.stream(id)?.windowUpdate(increment)
        case .ping(let value):
            self.send(MuxFrame(streamID: 0, payload: .pong(value)))
        case .pong(let value):
            if self.outstandingPing?.value == value { self.outstandingPing = nil }
        case .goAway(let code):
            self.logger.info("tunnel peer going away", metadata: ["code": "\(code)"])
            if self.closeReason == nil { self.closeReason = MuxTunnelCloseReason(goAway: code) }
            if code == .noError {
                self.stopOpening()
                if self.streams.isEmpty { self.closeChannel(.shutdown) }
            } else {
                self.closeChannel(.protocolError)
            }
        }
    }

    /// The stream with this id, `nil` for a stream that already ended (its late frames are dropped). As in
    /// HTTP/2, opening an id ends every lower one that was never opened: their frames are dropped too.
    /// - Throws: for an id that can never have been opened: even (the mux opens odd ones), or above the
    ///   highest opened.
    private func stream(_ id: UInt32) throws -> MuxStream? {
        if let stream = self.streams[id] { return stream }
        let known = id % 2 == 1 && (self.role == .mux ? id < self.nextStreamID : id <= self.highestPeerStreamID)
        guard known else { throw MuxProtocolError.streamViolation("frame for stream \(id), which was never opened") }
        return nil
    }

    /// Demux: OPEN arrived.
    private func peerOpened(_ id: UInt32, target: String?) throws {
        guard self.role == .demux else { throw MuxProtocolError.streamViolation("OPEN sent to the mux") }
        guard id > self.highestPeerStreamID else {
            throw MuxProtocolError.streamViolation("OPEN reuses stream id \(id)")
        }
        guard id % 2 == 1 else { throw MuxProtocolError.streamViolation("OPEN with an even stream id \(id)") }
        self.highestPeerStreamID = id
        // Each stream is a client of the demux: counted as accepted, and as rejected if refused here.
        self.environment.metrics?.accepted()
        guard !self.isDraining else {
            self.logger.info("stream refused", metadata: ["stream.id": .stringConvertible(id), "draining": "true"])
            self.send(MuxFrame(streamID: id, payload: .reset(.refusedStream)))
            return
        }
        guard self.streams.count < self.configuration.maximumStreams else {
            self.reject(id, .limitReached, metadata: ["streams": "\(self.streams.count)"])
            return
        }
        var connectTarget = self.environment.target
        if let target {
            // HOST:PORT in printable ASCII, as a SOCKS host name must be: a NUL, a newline or a byte that is not
            // UTF-8 would otherwise reach the resolver and the log.
            let printable = target.utf8.allSatisfy { (0x21...0x7E).contains($0) }
            guard self.configuration.allowOpenTarget, printable, !target.hasPrefix(":"),
                let endpoint = try? Endpoint(parsing: target), endpoint.port != 0
            else {
                self.reject(id, .notAllowed, metadata: ["target": "\(printable ? target : "(not printable ASCII)")"])
                return
            }
            connectTarget = ConnectTarget(endpoint)
        }
        guard let connectTarget else {
            self.reject(id, .notAllowed, metadata: [:])
            return
        }
        // --max-connections counts streams across every tunnel of this demux; the slot is claimed in the
        // same step as the check (the tunnels may run on several event loops).
        guard self.environment.streams.admit(self.streamAdmission, address: nil) == .admit else {
            self.reject(id, .limitReached, metadata: ["bridges.active": "\(self.environment.streams.count)"])
            return
        }
        let stream = MuxStream(role: .demux, environment: self.environment, eventLoop: self.channel.eventLoop)
        self.streams[id] = stream
        self.environment.metrics?.streamOpened()
        stream.connect(on: self, streamID: id, connector: TCPServerConnector(target: connectTarget))
    }

    /// Demux: turns away the stream the peer opened as `id` with RESET (`refusedStream` or
    /// `targetNotAllowed`), logged and counted as a rejected connection; the tunnel stays up.
    private func reject(_ id: UInt32, _ reason: CloseReason, metadata: Logger.Metadata) {
        var metadata = metadata
        metadata["stream.id"] = .stringConvertible(id)
        metadata["close.reason"] = "\(reason)"
        self.logger.info("connection rejected", metadata: metadata)
        self.environment.metrics?.rejected(reason)
        self.send(MuxFrame(streamID: id, payload: .reset(MuxErrorCode(reason))))
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
            self.sendPing()
            self.flushIfNeeded()
        }
        self.schedulePing()
    }

    private func sendPing() {
        self.pingCounter &+= 1
        self.outstandingPing = (self.pingCounter, self.channel.eventLoop.now)
        self.send(MuxFrame(streamID: 0, payload: .ping(self.pingCounter)))
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
