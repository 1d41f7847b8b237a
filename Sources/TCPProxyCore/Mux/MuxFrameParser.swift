import NIOCore

/// Cuts the tunnel's byte stream into frames as reads arrive, without waiting for whole DATA frames.
///
/// A DATA frame's payload is handed on as soon as any of it is there: its header comes out as
/// ``Event/dataHeader(streamID:length:)``, then its payload as one or more ``Event/dataBytes(streamID:_:)``
/// slices of the reads (no copies). Only a header cut by the end of a read, or a control frame (at most
/// 11 + 261 bytes), is ever copied into a small buffer of its own. A header that can never be valid throws
/// before anything behind it is taken, so a hostile length is refused before any of its payload is read.
///
/// No I/O: the session feeds it reads and acts on the events.
struct MuxFrameParser {
    /// What the bytes read so far say, in order.
    enum Event: Hashable, Sendable {
        /// A whole frame of any type but DATA.
        case frame(MuxFrame)
        /// The header of a DATA frame with `length` payload bytes; they follow as ``dataBytes(streamID:_:)``.
        case dataHeader(streamID: UInt32, length: Int)
        /// The next bytes of the payload of the DATA frame whose header came last (never empty).
        case dataBytes(streamID: UInt32, ByteBuffer)
    }

    /// The largest DATA payload accepted.
    let maximumPayload: Int
    /// The start of a header or of a control frame cut by the end of a read.
    private var partial = ByteBuffer()
    /// The DATA frame being read, and how many of its payload bytes are still to come.
    private var dataStreamID: UInt32 = 0
    private var dataRemaining = 0

    /// The most bytes ``partial`` ever holds: a header and the largest control payload (an OPEN target).
    static let maximumBuffered = MuxFrame.headerSize + MuxFrame.maximumTargetLength

    /// - Parameter maximumPayload: the largest DATA payload accepted.
    init(maximumPayload: Int = MuxFrame.defaultMaximumPayload) {
        self.maximumPayload = maximumPayload
    }

    /// Bytes of a cut header or control frame held for the next read.
    var bufferedBytes: Int { self.partial.readableBytes }

    /// Takes the next event out of `buffer`. Call it until it returns `nil`: by then every byte of `buffer`
    /// has been consumed, handed out or kept for the next read.
    /// - Throws: ``MuxProtocolError`` for a frame that can never be valid; the stream of frames is then
    ///   broken for good.
    mutating func next(_ buffer: inout ByteBuffer) throws -> Event? {
        if self.dataRemaining > 0 {
            guard buffer.readableBytes > 0 else { return nil }
            let count = min(self.dataRemaining, buffer.readableBytes)
            self.dataRemaining -= count
            return .dataBytes(streamID: self.dataStreamID, buffer.readSlice(length: count)!)
        }
        if self.partial.readableBytes > 0 {
            return try self.completePartial(&buffer)
        }
        guard buffer.readableBytes > 0 else { return nil }
        var peek = buffer
        guard let header = try peek.readMuxFrameHeader(maximumPayload: self.maximumPayload) else {
            self.keep(&buffer)
            return nil
        }
        if header.type == .data {
            buffer = peek
            return self.startData(header)
        }
        guard let frame = try buffer.readMuxFrame(maximumPayload: self.maximumPayload) else {
            self.keep(&buffer)
            return nil
        }
        return .frame(frame)
    }

    private mutating func startData(_ header: MuxFrameHeader) -> Event {
        self.dataStreamID = header.streamID
        self.dataRemaining = header.length
        return .dataHeader(streamID: header.streamID, length: header.length)
    }

    /// Keeps the rest of `buffer` (less than a header, or a control frame cut short) for the next read.
    private mutating func keep(_ buffer: inout ByteBuffer) {
        precondition(buffer.readableBytes <= Self.maximumBuffered, "kept \(buffer.readableBytes) bytes")
        self.partial.clear()
        self.partial.writeBuffer(&buffer)
    }

    /// Tops up a header or control frame kept from the last read with the bytes that complete it, and no more.
    private mutating func completePartial(_ buffer: inout ByteBuffer) throws -> Event? {
        if self.partial.readableBytes < MuxFrame.headerSize {
            let count = min(MuxFrame.headerSize - self.partial.readableBytes, buffer.readableBytes)
            var head = buffer.readSlice(length: count)!
            self.partial.writeBuffer(&head)
            if self.partial.readableBytes < MuxFrame.headerSize { return nil }
        }
        var peek = self.partial
        // Eleven bytes are there, so this is a header or it throws.
        let header = try peek.readMuxFrameHeader(maximumPayload: self.maximumPayload)!
        if header.type == .data {
            self.partial.clear()
            return self.startData(header)
        }
        let total = MuxFrame.headerSize + header.length
        let count = min(total - self.partial.readableBytes, buffer.readableBytes)
        var rest = buffer.readSlice(length: count)!
        self.partial.writeBuffer(&rest)
        guard let frame = try self.partial.readMuxFrame(maximumPayload: self.maximumPayload) else { return nil }
        self.partial.clear()
        return .frame(frame)
    }
}
