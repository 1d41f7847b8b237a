import NIOCore

/// One frame of the mux tunnel protocol (`docs/MUX-PROTOCOL.md`).
///
/// Every frame has an 11-byte header: version (1 byte, always 2), stream id (4 bytes, big-endian), type
/// (1 byte), flags (1 byte) and payload length (4 bytes, big-endian), then the payload.
struct MuxFrame: Hashable, Sendable {
    /// The stream the frame belongs to; 0 for frames about the whole tunnel (PING, PONG, GOAWAY).
    var streamID: UInt32
    /// What the frame says.
    var payload: Payload

    /// What a frame says, by type.
    enum Payload: Hashable, Sendable {
        /// Bytes of the stream, in order (type 0).
        case data(ByteBuffer)
        /// The mux opens a stream; `target` is a `HOST:PORT` the demux may honour if it allows it (type 1).
        case open(target: String?)
        /// The demux's answer to OPEN: its server connection is up (type 1 with the ACK flag).
        case openAcknowledged
        /// The sender will send no more bytes on this stream: a half-close (type 2).
        case eof
        /// The stream is over, abruptly, for this reason (type 3).
        case reset(MuxErrorCode)
        /// The receiver has written this many more bytes of the stream out; the sender may send as many more (type 4).
        case windowUpdate(UInt32)
        /// A keep-alive the peer must answer with a PONG carrying the same value (type 5).
        case ping(UInt64)
        /// The answer to a PING (type 6).
        case pong(UInt64)
        /// The sender is closing the tunnel: no new streams, and with an error code, at once (type 7).
        case goAway(MuxErrorCode)
    }

    /// The frame types on the wire.
    enum FrameType: UInt8, Sendable, CaseIterable {
        case data = 0, open = 1, eof = 2, reset = 3, windowUpdate = 4, ping = 5, pong = 6, goAway = 7
    }

    /// The protocol version this implementation speaks (2: each end announces its own window; see
    /// ``initialCredit``).
    static let version: UInt8 = 2
    /// Bytes before the payload.
    static let headerSize = 11
    /// The default and largest allowed DATA payload size.
    static let defaultMaximumPayload = 16 * 1024
    /// The largest OPEN target (`HOST:PORT`, a 255-byte name plus a port).
    static let maximumTargetLength = 261
    /// OPEN flag: this is the demux's acknowledgement.
    static let flagAcknowledge: UInt8 = 0x01
    /// The default per-stream receive window (`--window`), in bytes, in each direction.
    static let defaultInitialWindow = 256 * 1024
    /// The credit each direction of a new stream starts with, whatever the ends' windows: the smallest window
    /// there may be. Each receiver raises it to its own `--window` with a WINDOW_UPDATE when the stream
    /// starts, so the two ends need not be given the same window.
    static let initialCredit = 16 * 1024
    /// The largest window a WINDOW_UPDATE may grow a stream's credit to (2^31 - 1, as HTTP/2).
    static let maximumWindow = Int(Int32.max)
    /// The default most concurrent streams per tunnel.
    static let defaultMaximumStreams = 1024

    /// The wire type of this frame.
    var type: FrameType {
        switch self.payload {
        case .data: .data
        case .open, .openAcknowledged: .open
        case .eof: .eof
        case .reset: .reset
        case .windowUpdate: .windowUpdate
        case .ping: .ping
        case .pong: .pong
        case .goAway: .goAway
        }
    }
}

/// A reason code carried by RESET and GOAWAY frames. Unknown codes are kept as they are.
struct MuxErrorCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    var rawValue: UInt32

    init(rawValue: UInt32) {
        self.rawValue = rawValue
    }

    /// No error: a GOAWAY for a clean shutdown.
    static let noError = MuxErrorCode(rawValue: 0)
    /// The peer broke the protocol (bad frame, bad stream id).
    static let protocolError = MuxErrorCode(rawValue: 1)
    /// The peer sent more than its window allowed.
    static let flowControlError = MuxErrorCode(rawValue: 2)
    /// A frame was larger than the maximum.
    static let frameTooLarge = MuxErrorCode(rawValue: 3)
    /// The demux refused the stream: too many streams, or it is shutting down.
    static let refusedStream = MuxErrorCode(rawValue: 4)
    /// The demux could not connect to the target.
    static let connectFailed = MuxErrorCode(rawValue: 5)
    /// The demux's connect to the target timed out.
    static let connectTimeout = MuxErrorCode(rawValue: 6)
    /// The local socket was reset, closed too early, or a write to it failed.
    static let connectionReset = MuxErrorCode(rawValue: 7)
    /// The stream's stall timeout fired.
    static let stallTimeout = MuxErrorCode(rawValue: 8)
    /// The stream's idle timeout fired.
    static let idleTimeout = MuxErrorCode(rawValue: 9)
    /// The drain timeout fired during shutdown.
    static let drainTimeout = MuxErrorCode(rawValue: 10)
    /// OPEN named a target the demux does not allow.
    static let targetNotAllowed = MuxErrorCode(rawValue: 11)
    /// The peer did not answer PING in time.
    static let pingTimeout = MuxErrorCode(rawValue: 12)

    var description: String {
        switch self.rawValue {
        case 0: "noError"
        case 1: "protocolError"
        case 2: "flowControlError"
        case 3: "frameTooLarge"
        case 4: "refusedStream"
        case 5: "connectFailed"
        case 6: "connectTimeout"
        case 7: "connectionReset"
        case 8: "stallTimeout"
        case 9: "idleTimeout"
        case 10: "drainTimeout"
        case 11: "targetNotAllowed"
        case 12: "pingTimeout"
        default: "code\(self.rawValue)"
        }
    }

    /// The code a stream ending for `reason` sends to its peer.
    init(_ reason: CloseReason) {
        switch reason {
        case .connectFailed: self = .connectFailed
        case .connectTimeout: self = .connectTimeout
        case .stallTimeout: self = .stallTimeout
        case .idleTimeout: self = .idleTimeout
        case .drainTimeout: self = .drainTimeout
        case .limitReached: self = .refusedStream
        case .notAllowed: self = .targetNotAllowed
        default: self = .connectionReset
        }
    }
}

/// A frame that can never be valid: the tunnel is closed with a GOAWAY carrying ``code``.
enum MuxProtocolError: Error, Hashable, CustomStringConvertible {
    /// The version byte is not 1.
    case unsupportedVersion(UInt8)
    /// The type byte names no frame type.
    case unknownType(UInt8)
    /// The payload length is over the limit for this type.
    case payloadTooLarge(type: UInt8, length: UInt32, limit: Int)
    /// A fixed-size payload has the wrong length.
    case badLength(type: UInt8, length: UInt32)
    /// Stream id 0 on a stream frame, or non-zero on a tunnel frame.
    case badStreamID(type: UInt8, streamID: UInt32)
    /// A WINDOW_UPDATE of 0, or one that grows a window over 2^31 - 1.
    case badWindowIncrement(UInt32)
    /// A stream frame broke the stream rules (OPEN reusing an id, more DATA than the window).
    case streamViolation(String)

    /// The GOAWAY code this error earns.
    var code: MuxErrorCode {
        switch self {
        case .payloadTooLarge: .frameTooLarge
        case .badWindowIncrement: .flowControlError
        case .streamViolation(let text) where text.hasPrefix("flow"): .flowControlError
        default: .protocolError
        }
    }

    var description: String {
        switch self {
        case .unsupportedVersion(let version): "unsupported protocol version \(version)"
        case .unknownType(let type): "unknown frame type \(type)"
        case .payloadTooLarge(let type, let length, let limit): "frame type \(type) of \(length) bytes is over the limit of \(limit)"
        case .badLength(let type, let length): "frame type \(type) cannot be \(length) bytes long"
        case .badStreamID(let type, let streamID): "frame type \(type) cannot use stream id \(streamID)"
        case .badWindowIncrement(let increment): "invalid window increment \(increment)"
        case .streamViolation(let text): text
        }
    }
}
