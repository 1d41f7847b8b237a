import NIOCore
import Testing

@testable import TCPProxyCore

@Suite("Mux frame codec")
struct MuxFrameTests {
    private func encode(_ frame: MuxFrame) -> [UInt8] {
        var buffer = ByteBuffer()
        let written = buffer.writeMuxFrame(frame)
        #expect(written == buffer.readableBytes)
        return Array(buffer.readableBytesView)
    }

    private func decode(_ bytes: [UInt8], maximumPayload: Int = MuxFrame.defaultMaximumPayload) throws -> MuxFrame? {
        var buffer = ByteBuffer(bytes: bytes)
        let frame = try buffer.readMuxFrame(maximumPayload: maximumPayload)
        if frame != nil { #expect(buffer.readableBytes == 0) } else { #expect(buffer.readableBytes == bytes.count) }
        return frame
    }

    /// Every frame type, with its exact bytes: version, stream id, type, flags, length, payload.
    static let examples: [(MuxFrame, [UInt8])] = [
        (
            MuxFrame(streamID: 1, payload: .data(ByteBuffer(string: "hi"))),
            [2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 2, 0x68, 0x69]
        ),
        (MuxFrame(streamID: 3, payload: .open(target: nil)), [2, 0, 0, 0, 3, 1, 0, 0, 0, 0, 0]),
        (
            MuxFrame(streamID: 3, payload: .open(target: "a:80")),
            [2, 0, 0, 0, 3, 1, 0, 0, 0, 0, 4, 0x61, 0x3A, 0x38, 0x30]
        ),
        (MuxFrame(streamID: 3, payload: .openAcknowledged), [2, 0, 0, 0, 3, 1, 1, 0, 0, 0, 0]),
        (MuxFrame(streamID: 0x0102_0304, payload: .eof), [2, 1, 2, 3, 4, 2, 0, 0, 0, 0, 0]),
        (MuxFrame(streamID: 5, payload: .reset(.connectFailed)), [2, 0, 0, 0, 5, 3, 0, 0, 0, 0, 4, 0, 0, 0, 5]),
        (
            MuxFrame(streamID: 5, payload: .windowUpdate(65536)),
            [2, 0, 0, 0, 5, 4, 0, 0, 0, 0, 4, 0, 1, 0, 0]
        ),
        (
            MuxFrame(streamID: 0, payload: .ping(0x0102_0304_0506_0708)),
            [2, 0, 0, 0, 0, 5, 0, 0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]
        ),
        (MuxFrame(streamID: 0, payload: .pong(9)), [2, 0, 0, 0, 0, 6, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 9]),
        (MuxFrame(streamID: 0, payload: .goAway(.protocolError)), [2, 0, 0, 0, 0, 7, 0, 0, 0, 0, 4, 0, 0, 0, 1]),
    ]

    @Test("each frame type encodes to its exact bytes and decodes back", arguments: 0..<examples.count)
    func roundTrip(index: Int) throws {
        let (frame, bytes) = Self.examples[index]
        #expect(self.encode(frame) == bytes)
        #expect(try self.decode(bytes) == frame)
    }

    @Test("a frame cut anywhere short returns nil and leaves the buffer unread", arguments: 0..<examples.count)
    func needsMore(index: Int) throws {
        let bytes = Self.examples[index].1
        for length in 0..<bytes.count {
            #expect(try self.decode(Array(bytes.prefix(length))) == nil)
        }
    }

    @Test("frames back to back decode one by one")
    func backToBack() throws {
        var buffer = ByteBuffer()
        for (frame, _) in Self.examples { buffer.writeMuxFrame(frame) }
        var decoded: [MuxFrame] = []
        while let frame = try buffer.readMuxFrame() { decoded.append(frame) }
        #expect(decoded == Self.examples.map(\.0))
        #expect(buffer.readableBytes == 0)
    }

    /// Malformed headers and payloads, and the error each earns.
    static let malformed: [([UInt8], MuxProtocolError)] = [
        ([1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0], .unsupportedVersion(1)),  // the first version, which had no window announcement
        ([2, 0, 0, 0, 1, 9, 0, 0, 0, 0, 0], .unknownType(9)),
        ([2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x41], .badStreamID(type: 0, streamID: 0)),
        ([2, 0, 0, 0, 1, 5, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0], .badStreamID(type: 5, streamID: 1)),
        ([2, 0, 0, 0, 1, 2, 0, 0, 0, 0, 1, 0], .badLength(type: 2, length: 1)),
        ([2, 0, 0, 0, 1, 3, 0, 0, 0, 0, 2, 0, 0], .badLength(type: 3, length: 2)),
        ([2, 0, 0, 0, 0, 5, 0, 0, 0, 0, 4, 0, 0, 0, 0], .badLength(type: 5, length: 4)),
        ([2, 0, 0, 0, 1, 4, 0, 0, 0, 0, 4, 0, 0, 0, 0], .badWindowIncrement(0)),
        ([2, 0, 0, 0, 1, 4, 0, 0, 0, 0, 4, 0x80, 0, 0, 0], .badWindowIncrement(0x8000_0000)),
        ([2, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 0x61], .badLength(type: 1, length: 1)),
        // A length over the limit is refused from the header alone, before any payload arrives.
        ([2, 0, 0, 0, 1, 0, 0, 0, 0, 0x40, 1], .payloadTooLarge(type: 0, length: 0x4001, limit: 16384)),
        ([2, 0, 0, 0, 1, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF], .payloadTooLarge(type: 0, length: 0xFFFF_FFFF, limit: 16384)),
        ([2, 0, 0, 0, 1, 1, 0, 0, 0, 1, 6], .payloadTooLarge(type: 1, length: 262, limit: 261)),
    ]

    @Test("malformed and oversized frames throw the right error and leave the buffer unread", arguments: 0..<malformed.count)
    func rejectsMalformed(index: Int) {
        let (bytes, expected) = Self.malformed[index]
        var buffer = ByteBuffer(bytes: bytes)
        #expect(throws: expected) { try buffer.readMuxFrame() }
        #expect(buffer.readableBytes == bytes.count)
    }

    @Test("protocol errors map to GOAWAY codes")
    func errorCodes() {
        #expect(MuxProtocolError.payloadTooLarge(type: 0, length: 1, limit: 0).code == .frameTooLarge)
        #expect(MuxProtocolError.badWindowIncrement(0).code == .flowControlError)
        #expect(MuxProtocolError.unknownType(9).code == .protocolError)
        var window = MuxWindow(receiveWindow: 10, initialCredit: 10)
        #expect(throws: MuxProtocolError.self) { try window.received(11) }
        do { try window.received(11) } catch let error as MuxProtocolError { #expect(error.code == .flowControlError) } catch {}
    }

    @Test("a large payload is split into DATA frames of at most the maximum payload")
    func splitsData() throws {
        let payload = ByteBuffer(bytes: (0..<40_000).map { UInt8(truncatingIfNeeded: $0) })
        var buffer = ByteBuffer()
        let written = buffer.writeMuxDataFrames(streamID: 7, payload: payload, maximumPayload: 16384)
        #expect(written == ByteBuffer.muxDataFramesSize(bytes: 40_000, maximumPayload: 16384))
        #expect(written == 40_000 + 3 * MuxFrame.headerSize)
        var joined = ByteBuffer()
        var sizes: [Int] = []
        while let frame = try buffer.readMuxFrame() {
            guard case .data(var bytes) = frame.payload else { Issue.record("not DATA"); return }
            #expect(frame.streamID == 7)
            sizes.append(bytes.readableBytes)
            joined.writeBuffer(&bytes)
        }
        #expect(sizes == [16384, 16384, 7232])
        #expect(joined == payload)
    }

    @Test("bounded fuzz: 20,000 seeded random and mutated inputs never crash, and nil or throw leave the buffer as it was")
    func fuzz() throws {
        var random = RandomSource(seed: 0x6D75_7801)
        let valid = Self.examples.map(\.1)
        var decodedCount = 0
        for _ in 0..<20_000 {
            var bytes: [UInt8]
            if random.next() % 2 == 0 {
                // A valid frame with a few bytes flipped, cut or extended.
                bytes = valid[Int(random.next() % UInt64(valid.count))]
                for _ in 0..<(1 + random.next() % 3) where !bytes.isEmpty {
                    bytes[Int(random.next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: random.next())
                }
                if random.next() % 4 == 0 { bytes = Array(bytes.prefix(Int(random.next() % UInt64(bytes.count + 1)))) }
                if random.next() % 4 == 0 { bytes += (0..<(random.next() % 8)).map { _ in UInt8(truncatingIfNeeded: random.next()) } }
            } else {
                bytes = (0..<(random.next() % 40)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
                if !bytes.isEmpty && random.next() % 2 == 0 { bytes[0] = 1 }
            }
            var buffer = ByteBuffer(bytes: bytes)
            do {
                while let frame = try buffer.readMuxFrame(maximumPayload: 64) {
                    decodedCount += 1
                    // Whatever decodes re-encodes to the same bytes it came from, flags aside.
                    var again = ByteBuffer()
                    again.writeMuxFrame(frame)
                    var reread = again
                    #expect(try reread.readMuxFrame(maximumPayload: 64) == frame)
                }
                #expect(buffer.readableBytes < MuxFrame.headerSize + 64 + 1)
            } catch {
                #expect(error is MuxProtocolError)
            }
        }
        #expect(decodedCount > 1000)
    }
}

