/// The sequence numbers of one synthesized TCP conversation: which segment each side sends next.
///
/// Pure: it only counts. Each side's sequence number starts at its initial sequence number, the SYN and
/// the FIN take one number each, and payload takes one per byte (RFC 9293 §3.4). Every segment after the
/// SYN acknowledges all the other side has sent so far, so the stream reads as lossless and in order.
struct TCPConversationState: Sendable {
    /// The client's end; IPv6-mapped when the server's end is IPv6 and the client's is not.
    let client: CaptureEndpoint
    /// The server's end, in the client's address family.
    let server: CaptureEndpoint
    /// The sequence number of the client's SYN.
    let clientInitialSequence: UInt32
    /// The sequence number of the server's SYN.
    let serverInitialSequence: UInt32
    /// The sequence number of the client's next byte or FIN.
    private(set) var clientNext: UInt32
    /// The sequence number of the server's next byte or FIN.
    private(set) var serverNext: UInt32
    /// Whether the client sent its FIN (upstream ended).
    private(set) var upstreamEnded = false
    /// Whether the server sent its FIN (downstream ended).
    private(set) var downstreamEnded = false
    /// Whether either side reset the conversation; nothing follows a reset.
    private(set) var isReset = false

    /// A conversation whose handshake is done (``handshake`` gives its segments).
    /// - Parameters:
    ///   - client: The client's address and port.
    ///   - server: The server's address and port.
    ///   - clientInitialSequence: The client's initial sequence number.
    ///   - serverInitialSequence: The server's initial sequence number.
    init(
        client: CaptureEndpoint,
        server: CaptureEndpoint,
        clientInitialSequence: UInt32,
        serverInitialSequence: UInt32
    ) {
        (self.client, self.server) = CaptureEndpoint.sameFamily(client, server)
        self.clientInitialSequence = clientInitialSequence
        self.serverInitialSequence = serverInitialSequence
        self.clientNext = clientInitialSequence &+ 1
        self.serverNext = serverInitialSequence &+ 1
    }

    /// Whether the packets are IPv4 (both ends are IPv4).
    var isIPv4: Bool { self.client.address.isIPv4 }

    /// The three-way handshake (RFC 9293 §3.5): SYN, SYN-ACK, ACK.
    var handshake: [TCPSegment] {
        [
            TCPSegment(
                source: self.client,
                destination: self.server,
                sequenceNumber: self.clientInitialSequence,
                acknowledgmentNumber: 0,
                flags: .syn
            ),
            TCPSegment(
                source: self.server,
                destination: self.client,
                sequenceNumber: self.serverInitialSequence,
                acknowledgmentNumber: self.clientInitialSequence &+ 1,
                flags: [.syn, .ack]
            ),
            TCPSegment(
                source: self.client,
                destination: self.server,
                sequenceNumber: self.clientInitialSequence &+ 1,
                acknowledgmentNumber: self.serverInitialSequence &+ 1,
                flags: .ack
            ),
        ]
    }

    /// Takes `length` payload bytes travelling `direction`.
    /// - Parameters:
    ///   - length: Payload bytes; the caller splits them into segments of at most
    ///     ``PCAPFormat/maximumSegmentSize``, each with the sequence number advanced by its offset.
    ///   - direction: Which side sends them.
    /// - Returns: The PSH|ACK segment that carries the first byte, or `nil` for no bytes or after a reset.
    mutating func data(length: Int, direction: Direction) -> TCPSegment? {
        guard length > 0, !self.isReset else { return nil }
        let segment = self.segment(direction, flags: [.psh, .ack])
        self.advance(direction, by: UInt32(truncatingIfNeeded: length))
        return segment
    }

    /// The sender of `direction` half-closed.
    /// - Parameter direction: Which side sent the FIN.
    /// - Returns: Its FIN|ACK, and, when the other side had already sent its FIN, that side's ACK of this
    ///   one, so the close is complete; nothing after a reset or for a second FIN the same way.
    mutating func end(_ direction: Direction) -> [TCPSegment] {
        guard !self.isReset else { return [] }
        switch direction {
        case .upstream:
            guard !self.upstreamEnded else { return [] }
            self.upstreamEnded = true
        case .downstream:
            guard !self.downstreamEnded else { return [] }
            self.downstreamEnded = true
        }
        let fin = self.segment(direction, flags: [.fin, .ack])
        self.advance(direction, by: 1)
        guard self.upstreamEnded, self.downstreamEnded else { return [fin] }
        let other: Direction = direction == .upstream ? .downstream : .upstream
        return [fin, self.segment(other, flags: .ack)]
    }

    /// The sender of `direction` reset the conversation.
    /// - Parameter direction: Which side sent the RST.
    /// - Returns: Its RST|ACK, or `nil` after an earlier reset.
    mutating func reset(_ direction: Direction) -> TCPSegment? {
        guard !self.isReset else { return nil }
        self.isReset = true
        return self.segment(direction, flags: [.rst, .ack])
    }

    /// A segment from the sender of `direction` at its next sequence number, acknowledging the other side.
    private func segment(_ direction: Direction, flags: TCPFlags) -> TCPSegment {
        switch direction {
        case .upstream:
            TCPSegment(
                source: self.client,
                destination: self.server,
                sequenceNumber: self.clientNext,
                acknowledgmentNumber: self.serverNext,
                flags: flags
            )
        case .downstream:
            TCPSegment(
                source: self.server,
                destination: self.client,
                sequenceNumber: self.serverNext,
                acknowledgmentNumber: self.clientNext,
                flags: flags
            )
        }
    }

    /// Moves the sender of `direction` on by `count` sequence numbers, wrapping as TCP does.
    private mutating func advance(_ direction: Direction, by count: UInt32) {
        switch direction {
        case .upstream: self.clientNext &+= count
        case .downstream: self.serverNext &+= count
        }
    }
}
