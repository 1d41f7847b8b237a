import NIOCore
import Testing

@testable import TCPProxyCore

/// Bounded property tests of the SOCKS parsers and handshake: seeded random bytes and mutations of valid
/// messages. Each must end in a result (no crash, no hang: every loop is bounded by the input), leave the
/// buffer untouched unless it returns a message, and never ask to hold more than the largest valid message.
@Suite("SOCKS fuzzing")
struct SOCKSFuzzTests {
    /// Inputs per test: with random bytes and mutations, each parser sees 20,000 inputs (about a second in
    /// a debug build on one core).
    static let iterations = 10_000

    /// The largest valid message of each parser, so "need more" beyond it would mean unbounded memory.
    static let parsers: [(name: String, largest: Int, parse: @Sendable (inout ByteBuffer) throws -> Bool)] = [
        ("socks4", 8 + 256 + 256, { try $0.readSOCKS4Request() != nil }),
        ("socks5 greeting", 2 + 255, { try $0.readSOCKS5Greeting() != nil }),
        ("socks5 credentials", 3 + 255 + 255, { try $0.readSOCKS5Credentials() != nil }),
        ("socks5 request", 5 + 255 + 2, { try $0.readSOCKS5Request() != nil }),
    ]

    static let seeds: [[UInt8]] = [
        [0x04, 0x01, 0x00, 0x50, 0x7F, 0x00, 0x00, 0x01] + ascii("fred") + [0x00],
        [0x04, 0x01, 0x00, 0x50, 0x00, 0x00, 0x00, 0x01, 0x00] + ascii("example.com") + [0x00],
        [0x05, 0x02, 0x00, 0x02],
        [0x01, 0x05] + ascii("alice") + [0x06] + ascii("s3cret"),
        [0x05, 0x01, 0x00, 0x01, 0x7F, 0x00, 0x00, 0x01, 0x00, 0x50],
        [0x05, 0x01, 0x00, 0x04] + [UInt8](repeating: 0, count: 15) + [0x01, 0x01, 0xBB],
        [0x05, 0x01, 0x00, 0x03, 0x0B] + ascii("example.com") + [0x00, 0x50],
        [0x05, 0x01, 0x02] + [0x01, 0x05] + ascii("alice") + [0x06] + ascii("s3cret")
            + [0x05, 0x01, 0x00, 0x03, 0x09] + ascii("localhost") + [0x00, 0x50],
    ]

    /// Random bytes, with a protocol-looking first byte half the time, so the fuzzing gets past the version.
    static func randomInput(_ random: inout SeededRandom) -> [UInt8] {
        let length = Int(random.next() % 301)
        var bytes = [UInt8](repeating: 0, count: length)
        var word = random.next()
        for index in 0..<length {
            if index % 8 == 0 { word = random.next() }
            bytes[index] = UInt8(truncatingIfNeeded: word >> (8 * UInt64(index % 8)))
        }
        if !bytes.isEmpty, random.next() % 2 == 0 { bytes[0] = [0x01, 0x04, 0x05][Int(random.next() % 3)] }
        return bytes
    }

    /// A valid message with one to four random edits: flipped bytes, insertions, deletions, a cut, a long tail.
    static func mutation(_ random: inout SeededRandom) -> [UInt8] {
        var bytes = Self.seeds[Int(random.next() % UInt64(Self.seeds.count))]
        for _ in 0..<Int.random(in: 1...4, using: &random) {
            let byte = UInt8(truncatingIfNeeded: random.next())
            switch Int(random.next() % 5) {
            case 0 where !bytes.isEmpty:
                bytes[Int(random.next() % UInt64(bytes.count))] = byte
            case 1:
                bytes.insert(byte, at: Int(random.next() % UInt64(bytes.count + 1)))
            case 2 where !bytes.isEmpty:
                bytes.remove(at: Int(random.next() % UInt64(bytes.count)))
            case 3:
                bytes.removeLast(Int(random.next() % UInt64(bytes.count + 1)))
            default:
                bytes += [UInt8](repeating: byte, count: Int(random.next() % 401))
            }
        }
        return bytes
    }

    /// What is wrong with the parsers' handling of `input`, if anything. (Plain checks, not `#expect`, in
    /// the hot loop: this runs 10,000 times per test in a debug build.)
    static func parserProblem(_ input: [UInt8]) -> String? {
        let bytes = ByteBuffer(bytes: input)
        for parser in Self.parsers {
            var buffer = bytes  // parsers only move the reader index: no copy
            do {
                if try parser.parse(&buffer) {
                    if buffer.readableBytes >= input.count { return "\(parser.name) returned a message and consumed nothing" }
                } else {
                    if buffer.readableBytes != input.count { return "\(parser.name) did not unwind on nil" }
                    if input.count >= parser.largest { return "\(parser.name) waits on \(input.count) bytes" }
                }
            } catch {
                if buffer.readableBytes != input.count { return "\(parser.name) did not unwind on error" }
                if !(error is SOCKSError) { return "\(parser.name) threw \(error)" }
            }
        }
        return nil
    }

    /// What is wrong with a whole handshake over `input`, fed in random pieces, if anything.
    static func handshakeProblem(_ input: [UInt8], _ random: inout SeededRandom) -> String? {
        let users: SOCKSUsers? = random.next() % 2 == 0 ? testUsers : nil
        let driver = HandshakeDriver.run(input, users: users, feeding: .randomSplits(seed: random.next()))
        if driver.largestHeld > 520 { return "held \(driver.largestHeld) bytes" }
        if driver.written.count > 4 + 22 { return "wrote \(driver.written.count) bytes" }
        if case .connect(_, let leftover) = driver.outcome, leftover.count > input.count { return "leftover grew" }
        return nil
    }

    static func fuzz(seed: UInt64, input: (inout SeededRandom) -> [UInt8]) -> [String] {
        var random = SeededRandom(seed: seed)
        var problems: [String] = []
        for _ in 0..<Self.iterations where problems.count < 10 {
            let bytes = input(&random)
            if let problem = Self.parserProblem(bytes) ?? Self.handshakeProblem(bytes, &random) {
                problems.append("\(problem): \(hex(bytes))")
            }
        }
        return problems
    }

    @Test("random bytes: every parser and the whole handshake end, unwind and stay bounded")
    func randomBytes() {
        let problems = Self.fuzz(seed: 0x50C5, input: Self.randomInput)
        #expect(problems.isEmpty, "\(problems)")
    }

    @Test("mutated valid messages: every parser and the whole handshake end, unwind and stay bounded")
    func mutations() {
        let problems = Self.fuzz(seed: 0x5_0C55, input: Self.mutation)
        #expect(problems.isEmpty, "\(problems)")
    }

    @Test("the same input gives the same result however it is split")
    func splitIndependence() {
        var random = SeededRandom(seed: 42)
        for _ in 0..<2_000 {
            let input = Bool.random(using: &random) ? Self.mutation(&random) : Self.randomInput(&random)
            let whole = HandshakeDriver.run(input, users: testUsers, feeding: .whole)
            let pieces = HandshakeDriver.run(input, users: testUsers, feeding: .randomSplits(seed: random.next()))
            #expect(whole.written == pieces.written, "\(hex(input))")
            #expect(whole.outcome == pieces.outcome, "\(hex(input))")
        }
    }
}
