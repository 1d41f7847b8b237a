import NIOCore

/// The 11-byte header of a frame, checked: what the header alone can tell about the frame is valid.
struct MuxFrameHeader: Hashable, Sendable {
    /// The stream the frame belongs to (0 for PING, PONG and GOAWAY).
    var streamID: UInt32
    /// The frame type.
    var type: MuxFrame.FrameType
    /// The flags byte.
    var flags: UInt8
    /// The payload length, within the limit for the type.
    var length: Int
}

extension ByteBuffer {
    /// Reads one mux frame (`docs/MUX-PROTOCOL.md`). The header is checked as soon as it has arrived, so a
    /// hostile length never makes us wait for (and buffer) more than `maximumPayload` bytes.
    ///
    /// - Parameter maximumPayload: the largest DATA payload accepted.
    /// - Returns: the frame, or `nil` while bytes are missing (the reader index is left where it was).
    /// - Throws: ``MuxProtocolError`` for a frame that can never be valid (the reader index is left where it was).
    mutating func readMuxFrame(maximumPayload: Int = MuxFrame.defaultMaximumPayload) throws -> MuxFrame? {
        try self.parseSOCKSUnwindingIfNeeded { buffer in
            guard let header = try buffer.readMuxFrameHeader(maximumPayload: maximumPayload),
                let payload = buffer.readSlice(length: header.length)
            else { return nil }
            return MuxFrame(streamID: header.streamID, payload: try Self.decodeMuxPayload(header.type, flags: header.flags, payload))
        }
    }

    /// Reads and checks one frame header: version, type, stream id rules and the payload length for the type.
    ///
    /// - Parameter maximumPayload: the largest DATA payload accepted.
    /// - Returns: the header, or `nil` while fewer than 11 bytes are there (the reader index is left where it was).
    /// - Throws: ``MuxProtocolError`` for a header that can never be valid (the reader index is left where it was).
    mutating func readMuxFrameHeader(maximumPayload: Int = MuxFrame.defaultMaximumPayload) throws -> MuxFrameHeader? {
        try self.parseSOCKSUnwindingIfNeeded { buffer in
            guard let (version, streamID, typeByte, flags, length) = buffer.readMultipleIntegers(
                as: (UInt8, UInt32, UInt8, UInt8, UInt32).self
            ) else { return nil }
            guard version == MuxFrame.version else { throw MuxProtocolError.unsupportedVersion(version) }
            guard let type = MuxFrame.FrameType(rawValue: typeByte) else { throw MuxProtocolError.unknownType(typeByte) }
            try Self.checkMuxHeader(type: type, streamID: streamID, length: length, maximumPayload: maximumPayload)
            return MuxFrameHeader(streamID: streamID, type: type, flags: flags, length: Int(length))
        }
    }

    /// Checks what the header alone can tell: stream id rules and the payload length for the type.
    private static func checkMuxHeader(
        type: MuxFrame.FrameType,
        streamID: UInt32,
        length: UInt32,
        maximumPayload: Int
    ) throws {
        let isTunnelFrame = type == .ping || type == .pong || type == .goAway
        guard isTunnelFrame == (streamID == 0) else {
            throw MuxProtocolError.badStreamID(type: type.rawValue, streamID: streamID)
        }
        switch type {
        case .data:
            guard length <= maximumPayload else {
                throw MuxProtocolError.payloadTooLarge(type: type.rawValue, length: length, limit: maximumPayload)
            }
        case .open:
            guard length <= MuxFrame.maximumTargetLength else {
                throw MuxProtocolError.payloadTooLarge(type: type.rawValue, length: length, limit: MuxFrame.maximumTargetLength)
            }
        case .eof:
            guard length == 0 else { throw MuxProtocolError.badLength(type: type.rawValue, length: length) }
        case .reset, .windowUpdate, .goAway:
            guard length == 4 else { throw MuxProtocolError.badLength(type: type.rawValue, length: length) }
        case .ping, .pong:
            guard length == 8 else { throw MuxProtocolError.badLength(type: type.rawValue, length: length) }
        }
    }

    private static func decodeMuxPayload(
        _ type: MuxFrame.FrameType,
        flags: UInt8,
        _ payload: ByteBuffer
    ) throws -> MuxFrame.Payload {
        var payload = payload
        switch type {
        case .data:
            return .data(payload)
        case .open:
            if flags & MuxFrame.flagAcknowledge != 0 {
                guard payload.readableBytes == 0 else {
                    throw MuxProtocolError.badLength(type: type.rawValue, length: UInt32(payload.readableBytes))
                }
                return .openAcknowledged
            }
            guard payload.readableBytes > 0 else { return .open(target: nil) }
            // Checked by the demux, which refuses a bad target for that stream only (bytes that are not UTF-8
            // become U+FFFD here, which no target has).
            return .open(target: String(decoding: payload.readableBytesView, as: UTF8.self))
        case .eof:
            return .eof
        case .reset:
            return .reset(MuxErrorCode(rawValue: payload.readInteger(as: UInt32.self)!))
        case .windowUpdate:
            let increment = payload.readInteger(as: UInt32.self)!
            guard increment > 0, increment <= MuxFrame.maximumWindow else {
                throw MuxProtocolError.badWindowIncrement(increment)
            }
            return .windowUpdate(increment)
        case .ping:
            return .ping(payload.readInteger(as: UInt64.self)!)
        case .pong:
            return .pong(payload.readInteger(as: UInt64.self)!)
        case .goAway:
            return .goAway(MuxErrorCode(rawValue: payload.readInteger(as: UInt32.self)!))
        }
    }

    /// Writes one frame. A DATA payload must be at most the peer's maximum payload (see
    /// ``writeMuxDataFrames(streamID:payload:maximumPayload:)`` to split a larger one).
    /// - Returns: the bytes written.
    @discardableResult
    mutating func writeMuxFrame(_ frame: MuxFrame) -> Int {
        let start = self.writerIndex
        var flags: UInt8 = 0
        var length = 0
        switch frame.payload {
        case .data(let bytes): length = bytes.readableBytes
        case .open(let target): length = target?.utf8.count ?? 0
        case .openAcknowledged: flags = MuxFrame.flagAcknowledge
        case .eof: length = 0
        case .reset, .windowUpdate, .goAway: length = 4
        case .ping, .pong: length = 8
        }
        self.writeMultipleIntegers(MuxFrame.version, frame.streamID, frame.type.rawValue, flags, UInt32(length))
        switch frame.payload {
        case .data(var bytes): self.writeBuffer(&bytes)
        case .open(let target): if let target { self.writeString(target) }
        case .openAcknowledged, .eof: break
        case .reset(let code), .goAway(let code): self.writeInteger(code.rawValue)
        case .windowUpdate(let increment): self.writeInteger(increment)
        case .ping(let value), .pong(let value): self.writeInteger(value)
        }
        return self.writerIndex - start
    }

    /// Writes `payload` as DATA frames of at most `maximumPayload` bytes each.
    /// - Returns: the bytes written.
    @discardableResult
    mutating func writeMuxDataFrames(streamID: UInt32, payload: ByteBuffer, maximumPayload: Int) -> Int {
        let start = self.writerIndex
        var payload = payload
        repeat {
            var chunk = payload.readSlice(length: min(payload.readableBytes, maximumPayload))!
            self.writeMultipleIntegers(
                MuxFrame.version, streamID, MuxFrame.FrameType.data.rawValue, UInt8(0), UInt32(chunk.readableBytes)
            )
            self.writeBuffer(&chunk)
        } while payload.readableBytes > 0
        return self.writerIndex - start
    }

    /// The size of the DATA frames ``writeMuxDataFrames(streamID:payload:maximumPayload:)`` writes for `bytes`.
    static func muxDataFramesSize(bytes: Int, maximumPayload: Int) -> Int {
        let frames = max(1, (bytes + maximumPayload - 1) / maximumPayload)
        return bytes + frames * MuxFrame.headerSize
    }
}
