/// The TCP control bits a captured segment can carry (RFC 9293 §3.1).
struct TCPFlags: OptionSet, Hashable, Sendable {
    var rawValue: UInt8

    /// No more data from the sender.
    static let fin = TCPFlags(rawValue: 0x01)
    /// Synchronize sequence numbers.
    static let syn = TCPFlags(rawValue: 0x02)
    /// Reset the connection.
    static let rst = TCPFlags(rawValue: 0x04)
    /// Push function.
    static let psh = TCPFlags(rawValue: 0x08)
    /// The acknowledgment number is significant.
    static let ack = TCPFlags(rawValue: 0x10)
}

/// The header fields of one synthesized TCP segment; the payload travels beside it.
struct TCPSegment: Hashable, Sendable {
    /// The sender.
    var source: CaptureEndpoint
    /// The receiver.
    var destination: CaptureEndpoint
    /// The sequence number of the first payload byte (or of the SYN or FIN).
    var sequenceNumber: UInt32
    /// The next sequence number the sender expects from the receiver; 0 on a bare SYN.
    var acknowledgmentNumber: UInt32
    /// The control bits.
    var flags: TCPFlags
    /// The advertised window: a fixed, plausible value, since the real windows are not ours to see.
    var window: UInt16 = 65535
}
