import NIOCore

/// One bridge's synthesized TCP conversation in the capture file.
///
/// Used from the bridge's event loop only. It synthesizes packets on the calling thread and hands them to
/// the ``CaptureWriter``'s bounded queue; when the queue is full the packets are dropped, but the sequence
/// numbers still move on, so Wireshark shows the gap as lost segments rather than a garbled stream.
final class CaptureConversation {
    /// Where the packets go.
    private let writer: CaptureWriter
    /// The sequence numbers each way.
    private var state: TCPConversationState

    /// Starts a conversation and records its handshake; ``CaptureWriter/conversation(client:server:)``
    /// picks the initial sequence numbers.
    /// - Parameters:
    ///   - writer: Where the packets go.
    ///   - state: The conversation's ends and initial sequence numbers.
    init(writer: CaptureWriter, state: TCPConversationState) {
        self.writer = writer
        self.state = state
        self.submit(state.handshake)
    }

    /// The client's end as the packets show it (IPv6-mapped if the server is IPv6).
    var client: CaptureEndpoint { self.state.client }
    /// The server's end as the packets show it.
    var server: CaptureEndpoint { self.state.server }

    /// Records payload travelling `direction` as PSH|ACK packets of at most
    /// ``PCAPFormat/maximumSegmentSize`` bytes each.
    /// - Parameters:
    ///   - buffer: The payload; its reader index is not moved. An empty buffer records nothing.
    ///   - direction: Which way it travels.
    func record(_ buffer: ByteBuffer, direction: Direction) {
        let length = buffer.readableBytes
        guard let first = self.state.data(length: length, direction: direction) else { return }
        let timestamp = PCAPTimestamp.now()
        let maximumSegmentSize = PCAPFormat.maximumSegmentSize
        let records = (length + maximumSegmentSize - 1) / maximumSegmentSize
        let bytes = records * PCAPFormat.recordSize(payloadLength: 0, ipv4: self.state.isIPv4) + length
        self.writer.submit(bytes: bytes, records: records) { output in
            var segment = first
            var offset = 0
            while offset < length {
                let chunkLength = min(maximumSegmentSize, length - offset)
                // In range by construction: offset + chunkLength <= readableBytes.
                let chunk = buffer.getSlice(at: buffer.readerIndex + offset, length: chunkLength)!
                segment.sequenceNumber = first.sequenceNumber &+ UInt32(truncatingIfNeeded: offset)
                output.writePCAPRecord(timestamp: timestamp, segment: segment, payload: chunk)
                offset += chunkLength
            }
        }
    }

    /// Records that the sender of `direction` half-closed: a FIN|ACK that way (and the other side's ACK of
    /// it when both ways have ended). A second end the same way records nothing.
    /// - Parameter direction: The direction that ended.
    func recordEnd(_ direction: Direction) {
        self.submit(self.state.end(direction))
    }

    /// Records that the sender of `direction` reset the conversation: an RST|ACK that way. Nothing is
    /// recorded after a reset.
    /// - Parameter direction: The direction whose sender reset.
    func recordReset(_ direction: Direction) {
        guard let segment = self.state.reset(direction) else { return }
        self.submit([segment])
    }

    /// Queues segments without payload, all stamped now.
    private func submit(_ segments: [TCPSegment]) {
        guard !segments.isEmpty else { return }
        let timestamp = PCAPTimestamp.now()
        let bytes = segments.count * PCAPFormat.recordSize(payloadLength: 0, ipv4: self.state.isIPv4)
        self.writer.submit(bytes: bytes, records: segments.count) { output in
            for segment in segments {
                output.writePCAPRecord(timestamp: timestamp, segment: segment)
            }
        }
    }
}

@available(*, unavailable)
extension CaptureConversation: Sendable {}
