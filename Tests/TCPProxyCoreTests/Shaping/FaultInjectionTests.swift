import NIOCore
import Testing

@testable import TCPProxyCore

@Suite("Fault injection")
struct FaultInjectionTests {
    private func bitsDiffering(_ a: [UInt8], _ b: [UInt8]) -> Int {
        zip(a, b).map { ($0 ^ $1).nonzeroBitCount }.reduce(0, +)
    }

    @Test("probability 1 flips exactly one bit in every chunk; probability 0 none")
    func flips() {
        var random = RandomSource(seed: 42)
        let original = Array("the quick brown fox".utf8)
        for _ in 0..<200 {
            var buffer = ByteBuffer(bytes: original)
            #expect(BitFlipper(probability: 1).maybeFlip(&buffer, using: &random) != nil)
            #expect(self.bitsDiffering(Array(buffer.readableBytesView), original) == 1)
            var untouched = ByteBuffer(bytes: original)
            #expect(BitFlipper(probability: 0).maybeFlip(&untouched, using: &random) == nil)
            #expect(Array(untouched.readableBytesView) == original)
        }
    }

    @Test("a probability of one half flips about half the chunks")
    func half() {
        var random = RandomSource(seed: 7)
        var flipped = 0
        for _ in 0..<10_000 {
            var buffer = ByteBuffer(string: "x")
            if BitFlipper(probability: 0.5).maybeFlip(&buffer, using: &random) != nil { flipped += 1 }
        }
        #expect(flipped > 4_700 && flipped < 5_300)
    }

    @Test("only readable bytes are touched, and an empty chunk is left alone")
    func readableOnly() {
        var random = RandomSource(seed: 1)
        var buffer = ByteBuffer(string: "headerPAYLOAD")
        buffer.moveReaderIndex(forwardBy: 6)
        for _ in 0..<50 {
            var copy = buffer
            let flip = BitFlipper(probability: 1).maybeFlip(&copy, using: &random)!
            #expect(flip.byte < 7)
            copy.moveReaderIndex(to: 0)
            #expect(copy.readString(length: 6) == "header")
        }
        var empty = ByteBuffer()
        #expect(BitFlipper(probability: 1).maybeFlip(&empty, using: &random) == nil)
    }

    @Test("delayed chunks come out in order, each no earlier than its delay")
    func delayLine() {
        var random = RandomSource(seed: 3)
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
        var line = DelayLine(delay: .milliseconds(100), jitter: .milliseconds(50))
        for index in 0..<20 {
            line.append(ByteBuffer(string: "\(index)"), now: start + .milliseconds(Int64(index)), using: &random)
        }
        #expect(line.heldBytes == 30)
        #expect(line.popDue(now: start + .milliseconds(99)) == nil)
        var out: [String] = []
        var now = start
        while !line.isEmpty {
            now = line.nextDue!
            while let buffer = line.popDue(now: now) { out.append(String(buffer: buffer)) }
        }
        #expect(out == (0..<20).map { "\($0)" })
        #expect(now <= start + .milliseconds(19 + 150))
        #expect(line.heldBytes == 0)
    }

    @Test("latency specs parse milliseconds with optional jitter", arguments: [
        ("100", 100_000_000 as Int64, 0 as Int64), ("100:20", 100_000_000, 20_000_000), ("0.5", 500_000, 0),
    ])
    func latency(text: String, delay: Int64, jitter: Int64) {
        let spec = LatencySpec(parsing: text)
        #expect(spec?.delay.nanoseconds == delay)
        #expect(spec?.jitter.nanoseconds == jitter)
    }

    @Test("bad latency specs are refused", arguments: ["", ":", "100:", "-5", "1e3", "abc", "100:20:3", "9999999999"])
    func badLatency(text: String) {
        #expect(LatencySpec(parsing: text) == nil)
    }
}
