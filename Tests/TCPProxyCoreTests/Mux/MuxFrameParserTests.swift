import NIOCore
import Testing

@testable import TCPProxyCore

/// The streaming parser against the whole-frame codec: cut anywhere, it must say the same thing, hand out
/// DATA payload as it comes, and buffer no more than a header or a control frame.
@Suite("Mux frame parser")
struct MuxFrameParserTests {
    /// What a stream of bytes decodes to: whole frames, DATA reassembled, and the error that ended it.
    struct Outcome: Equatable {
        var frames: [MuxFrame] = []
        var error: MuxProtocolError?
    }

    /// Feeds `bytes` to a parser in reads cut at `cuts`, reassembling DATA from its pieces. Checks on the
    /// way that every read is used up, that no DATA piece is empty or runs past its frame, and that the
    /// parser never holds more than a header and a control payload.
    static func stream(_ bytes: [UInt8], cuts: [Int], maximumPayload: Int) -> Outcome {
        var parser = MuxFrameParser(maximumPayload: maximumPayload)
        var outcome = Outcome()
        var data: (streamID: UInt32, length: Int, bytes: ByteBuffer)?
        var start = 0
        for end in cuts.filter({ $0 > 0 && $0 < bytes.count }).sorted() + [bytes.count] where end >= start {
            var read = ByteBuffer(bytes: bytes[start..<end])
            start = end
            do {
                while let event = try parser.next(&read) {
                    switch event {
                    case .frame(let frame):
                        #expect(data == nil, "a control frame inside a DATA frame")
                        outcome.frames.append(frame)
                    case .dataHeader(let streamID, let length):
                        #expect(data == nil, "a DATA header inside a DATA frame")
                        data = (streamID, length, ByteBuffer())
                    case .dataBytes(let streamID, var piece):
                        guard data != nil else {
                            Issue.record("DATA bytes without a header")
                            return outcome
                        }
                        #expect(streamID == data!.streamID)
                        #expect(piece.readableBytes > 0, "an empty DATA piece")
                        data!.bytes.writeBuffer(&piece)
                        #expect(data!.bytes.readableBytes <= data!.length, "DATA past its length")
                    }
                    if let current = data, current.bytes.readableBytes == current.length {
                        outcome.frames.append(MuxFrame(streamID: current.streamID, payload: .data(current.bytes)))
                        data = nil
                    }
                }
            } catch let error as MuxProtocolError {
                outcome.error = error
                return outcome
            } catch {
                Issue.record("unexpected error \(error)")
                return outcome
            }
            #expect(read.readableBytes == 0, "the parser left \(read.readableBytes) bytes of a read")
            #expect(parser.bufferedBytes <= MuxFrameParser.maximumBuffered)
        }
        return outcome
    }

    /// The same bytes decoded whole by ``ByteBuffer/readMuxFrame(maximumPayload:)``.
    static func whole(_ bytes: [UInt8], maximumPayload: Int) -> Outcome {
        var buffer = ByteBuffer(bytes: bytes)
        var outcome = Outcome()
        do {
            while let frame = try buffer.readMuxFrame(maximumPayload: maximumPayload) { outcome.frames.append(frame) }
        } catch let error as MuxProtocolError {
            outcome.error = error
        } catch {
            Issue.record("unexpected error \(error)")
        }
        return outcome
    }

    static func encode(_ frames: [MuxFrame]) -> [UInt8] {
        var buffer = ByteBuffer()
        for frame in frames { buffer.writeMuxFrame(frame) }
        return Array(buffer.readableBytesView)
    }

    static let sample: [MuxFrame] = MuxFrameTests.examples.map(\.0) + [
        MuxFrame(streamID: 9, payload: .data(ByteBuffer(bytes: (0..<16384).map { UInt8(truncatingIfNeeded: $0 &* 7) }))),
        MuxFrame(streamID: 9, payload: .data(ByteBuffer())),
        MuxFrame(streamID: 11, payload: .open(target: String(repeating: "h", count: 255) + ":65535")),
        MuxFrame(streamID: 9, payload: .data(ByteBuffer(string: "tail"))),
    ]

    @Test("every frame type, cut at every single offset, decodes as it does whole", arguments: [1, 2, 10, 11, 12, 300, 5000])
    func everyCut(step: Int) {
        let bytes = Self.encode(Self.sample)
        let expected = Self.whole(bytes, maximumPayload: MuxFrame.defaultMaximumPayload)
        #expect(expected.frames == Self.sample && expected.error == nil)
        // Reads of `step` bytes, and (for every offset) one cut there.
        let reads = Self.stream(bytes, cuts: Array(stride(from: step, to: bytes.count, by: step)), maximumPayload: 16384)
        #expect(reads == expected)
        if step == 1 { return }
        for offset in stride(from: 0, to: bytes.count, by: step) {
            #expect(Self.stream(bytes, cuts: [offset], maximumPayload: 16384) == expected, "cut at \(offset)")
        }
    }

    @Test("DATA payload is handed out as it arrives, before the frame is complete")
    func dataStreams() throws {
        var parser = MuxFrameParser()
        var bytes = ByteBuffer()
        bytes.writeMuxFrame(MuxFrame(streamID: 5, payload: .data(ByteBuffer(repeating: 0xAB, count: 10_000))))
        var first = bytes.readSlice(length: 11 + 4000)!
        #expect(try parser.next(&first) == .dataHeader(streamID: 5, length: 10_000))
        #expect(try parser.next(&first) == .dataBytes(streamID: 5, ByteBuffer(repeating: 0xAB, count: 4000)))
        #expect(try parser.next(&first) == nil)
        #expect(parser.bufferedBytes == 0, "nothing of a DATA payload is copied")
        var second = bytes.readSlice(length: 6000)!
        #expect(try parser.next(&second) == .dataBytes(streamID: 5, ByteBuffer(repeating: 0xAB, count: 6000)))
        #expect(try parser.next(&second) == nil)
    }

    @Test("a header cut after any byte is kept, at most 11 bytes, and completed from the next read")
    func cutHeader() throws {
        let frame = MuxFrame(streamID: 3, payload: .windowUpdate(4096))
        let bytes = Self.encode([frame])
        for cut in 1..<MuxFrame.headerSize {
            var parser = MuxFrameParser()
            var head = ByteBuffer(bytes: bytes[..<cut])
            #expect(try parser.next(&head) == nil)
            #expect(parser.bufferedBytes == cut)
            var rest = ByteBuffer(bytes: bytes[cut...])
            #expect(try parser.next(&rest) == .frame(frame))
            #expect(try parser.next(&rest) == nil)
            #expect(parser.bufferedBytes == 0)
        }
    }

    @Test("an oversized DATA header throws before any of its payload is taken, even when the header was cut")
    func oversized() {
        let header: [UInt8] = [2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0]  // DATA of 65536 bytes
        for cut in 0..<header.count {
            let outcome = Self.stream(header + [0x41, 0x42], cuts: [cut], maximumPayload: 16384)
            #expect(outcome.error == .payloadTooLarge(type: 0, length: 65536, limit: 16384))
            #expect(outcome.frames.isEmpty)
        }
    }

    /// Like ``MuxFrameTests/fuzz()``, and with the same inputs cut into random reads: the streaming parser
    /// agrees with the whole-frame codec on the frames and the error.
    @Test("bounded fuzz: 20,000 seeded random, mutated and randomly cut inputs decode as they do whole")
    func fuzz() {
        var random = RandomSource(seed: 0x6D75_7802)
        let valid = MuxFrameTests.examples.map(\.1)
        var framesSeen = 0
        var errorsSeen = 0
        for _ in 0..<20_000 {
            var bytes: [UInt8] = []
            // A few frames back to back, some mutated, or noise.
            for _ in 0..<(1 + random.next() % 4) {
                if random.next() % 3 == 0 {
                    bytes += (0..<(random.next() % 40)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
                    if !bytes.isEmpty && random.next() % 2 == 0 { bytes[0] = 1 }
                    continue
                }
                var frame = valid[Int(random.next() % UInt64(valid.count))]
                if random.next() % 3 == 0 {
                    // A DATA frame of up to 80 bytes (over the fuzz limit of 64 now and then).
                    let length = Int(random.next() % 81)
                    frame = Self.encode([
                        MuxFrame(streamID: 1, payload: .data(ByteBuffer(bytes: (0..<length).map { UInt8(truncatingIfNeeded: $0) })))
                    ])
                }
                if random.next() % 4 == 0 {
                    for _ in 0..<(1 + random.next() % 2) where !frame.isEmpty {
                        frame[Int(random.next() % UInt64(frame.count))] = UInt8(truncatingIfNeeded: random.next())
                    }
                }
                bytes += frame
            }
            let cuts = (0..<(random.next() % 6)).map { _ in Int(random.next() % UInt64(bytes.count + 1)) }
            let expected = Self.whole(bytes, maximumPayload: 64)
            let streamed = Self.stream(bytes, cuts: cuts, maximumPayload: 64)
            #expect(streamed == expected, "\(bytes) cut at \(cuts)")
            framesSeen += expected.frames.count
            if expected.error != nil { errorsSeen += 1 }
        }
        #expect(framesSeen > 5000)
        #expect(errorsSeen > 1000)
    }
}
