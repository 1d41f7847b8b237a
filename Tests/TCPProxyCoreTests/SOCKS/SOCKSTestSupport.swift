import NIOCore

@testable import TCPProxyCore

/// The fuzz and split tests draw from the engine's seeded generator, so they are the same on every run.
typealias SeededRandom = RandomSource

/// How bytes are handed to a parser or machine: all at once, one at a time, or in random pieces.
enum Feeding: Hashable, CustomStringConvertible {
    case whole
    case byteByByte
    case randomSplits(seed: UInt64)

    /// Every way, with a few seeds of random splits.
    static let all: [Feeding] = [.whole, .byteByByte] + (1...8).map { .randomSplits(seed: $0) }

    func chunks(_ bytes: [UInt8]) -> [[UInt8]] {
        switch self {
        case .whole:
            return [bytes]
        case .byteByByte:
            return bytes.map { [$0] }
        case .randomSplits(let seed):
            var random = SeededRandom(seed: seed)
            var chunks: [[UInt8]] = []
            var index = 0
            while index < bytes.count {
                let length = Int.random(in: 1...max(1, min(bytes.count - index, 40)), using: &random)
                chunks.append(Array(bytes[index..<index + length]))
                index += length
            }
            return chunks
        }
    }

    var description: String {
        switch self {
        case .whole: "whole"
        case .byteByByte: "byte by byte"
        case .randomSplits(let seed): "random splits #\(seed)"
        }
    }
}

/// Drives a ``SOCKSServerStateMachine`` as ``SOCKSHandshakeHandler`` does, without a channel: it buffers
/// what arrives, feeds the machine, and records what would be written and how the handshake ended.
struct HandshakeDriver {
    enum Outcome: Hashable, Sendable {
        /// Still waiting for bytes.
        case needMore
        /// The machine asked to connect; `leftover` are the bytes after the request.
        case connect(SOCKSServerStateMachine.ConnectRequest, leftover: [UInt8])
        /// The machine gave up with this error (its reply, if any, is at the end of `written`).
        case fail(SOCKSError)
    }

    var machine: SOCKSServerStateMachine
    var buffer = ByteBuffer()
    /// Every byte the proxy would have written.
    var written: [UInt8] = []
    var outcome = Outcome.needMore
    /// The most bytes held while waiting for more: what a client can make the proxy keep.
    var largestHeld = 0

    init(users: SOCKSUsers? = nil) {
        self.machine = SOCKSServerStateMachine(users: users)
    }

    /// Feeds one chunk. After a CONNECT, chunks go to the bridge, so they join `leftover`; after a failure
    /// they are dropped, as the handler drops them.
    mutating func receive(_ chunk: [UInt8]) {
        if case .connect(let request, let leftover) = self.outcome {
            self.outcome = .connect(request, leftover: leftover + chunk)
            return
        }
        guard case .needMore = self.outcome else { return }
        self.buffer.writeBytes(chunk)
        while true {
            switch self.machine.receive(&self.buffer) {
            case .needMore:
                self.largestHeld = max(self.largestHeld, self.buffer.readableBytes)
                return
            case .send(let reply):
                self.written += Self.bytes(of: reply)
            case .connect(let request):
                self.outcome = .connect(request, leftover: Array(self.buffer.readableBytesView))
                return
            case .fail(let error):
                if let reply = error.reply { self.written += Self.bytes(of: reply) }
                self.outcome = .fail(error)
                return
            }
        }
    }

    /// Runs a whole input through a fresh machine, fed as `feeding` says.
    static func run(_ input: [UInt8], users: SOCKSUsers? = nil, feeding: Feeding = .whole) -> HandshakeDriver {
        var driver = HandshakeDriver(users: users)
        for chunk in feeding.chunks(input) { driver.receive(chunk) }
        return driver
    }

    static func bytes(of reply: SOCKSReply) -> [UInt8] {
        var buffer = ByteBuffer()
        buffer.writeSOCKSReply(reply)
        return Array(buffer.readableBytesView)
    }
}

/// `NIOSingleStepByteToMessageDecoder` around one parser, for `ByteToMessageDecoderVerifier`.
struct ParserDecoder<Message: Equatable>: NIOSingleStepByteToMessageDecoder {
    typealias InboundOut = Message
    let parse: (inout ByteBuffer) throws -> Message?

    mutating func decode(buffer: inout ByteBuffer) throws -> Message? {
        try self.parse(&buffer)
    }

    mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> Message? {
        try self.parse(&buffer)
    }
}

/// Hex for failure messages.
func hex(_ bytes: [UInt8]) -> String {
    bytes.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }
        .joined(separator: " ")
}

/// The bytes of `text`.
func ascii(_ text: String) -> [UInt8] { Array(text.utf8) }

/// A test address.
func address(_ ip: String, _ port: Int) -> SocketAddress {
    try! SocketAddress(ipAddress: ip, port: port)
}

/// Users `alice:s3cret` and `bob:pa:ss`.
let testUsers = try! SOCKSUsers(parsing: "alice:s3cret\nbob:pa:ss\n")
