import Testing

@testable import TCPProxyCore

@Suite("Capture: TCP conversation sequence numbers")
struct CaptureTCPConversationStateTests {
    private let client = CaptureEndpoint(address: .v4(0x7F00_0001), port: 50000)
    private let server = CaptureEndpoint(address: .v4(0x7F00_0001), port: 8080)

    private func conversation() -> TCPConversationState {
        TCPConversationState(
            client: self.client,
            server: self.server,
            clientInitialSequence: 100,
            serverInitialSequence: 5000
        )
    }

    @Test("the handshake is SYN, SYN-ACK, ACK, each SYN taking one sequence number")
    func handshake() {
        let segments = self.conversation().handshake
        #expect(segments.map(\.flags) == [.syn, [.syn, .ack], .ack])
        #expect(segments.map(\.sequenceNumber) == [100, 5000, 101])
        #expect(segments.map(\.acknowledgmentNumber) == [0, 101, 5001])
        #expect(segments.map(\.source) == [self.client, self.server, self.client])
        #expect(segments.map(\.destination) == [self.server, self.client, self.server])
    }

    @Test("data advances the sender's sequence and the other side's acknowledgment")
    func dataProgression() throws {
        var state = self.conversation()
        let firstSegment = state.data(length: 10, direction: .upstream)
        let first = try #require(firstSegment)
        #expect(first.sequenceNumber == 101 && first.acknowledgmentNumber == 5001 && first.flags == [.psh, .ack])
        #expect(first.source == self.client)
        let replySegment = state.data(length: 25, direction: .downstream)
        let reply = try #require(replySegment)
        #expect(reply.sequenceNumber == 5001 && reply.acknowledgmentNumber == 111)
        #expect(reply.source == self.server && reply.destination == self.client)
        let secondSegment = state.data(length: 3, direction: .upstream)
        let second = try #require(secondSegment)
        #expect(second.sequenceNumber == 111 && second.acknowledgmentNumber == 5026)
        let noBytes = state.data(length: 0, direction: .upstream)
        #expect(noBytes == nil)
        #expect(state.clientNext == 114 && state.serverNext == 5026)
    }

    @Test("a FIN takes one sequence number; the second FIN is acknowledged by the side that ended first")
    func endProgression() throws {
        var state = self.conversation()
        _ = state.data(length: 10, direction: .upstream)
        let clientFIN = state.end(.upstream)
        #expect(clientFIN.map(\.flags) == [[.fin, .ack]])
        #expect(clientFIN.map(\.sequenceNumber) == [111])
        let secondFIN = state.end(.upstream)
        #expect(secondFIN.isEmpty)  // a second FIN the same way
        // Downstream keeps flowing after the client's half-close and acknowledges its FIN.
        let replySegment = state.data(length: 4, direction: .downstream)
        let reply = try #require(replySegment)
        #expect(reply.sequenceNumber == 5001 && reply.acknowledgmentNumber == 112)
        let serverFIN = state.end(.downstream)
        #expect(serverFIN.map(\.flags) == [[.fin, .ack], .ack])
        #expect(serverFIN[0].sequenceNumber == 5005 && serverFIN[0].acknowledgmentNumber == 112)
        #expect(serverFIN[1].source == self.client)
        #expect(serverFIN[1].sequenceNumber == 112 && serverFIN[1].acknowledgmentNumber == 5006)
    }

    @Test("a reset is an RST|ACK from its sender, and nothing follows it")
    func reset() throws {
        var state = self.conversation()
        _ = state.data(length: 10, direction: .downstream)
        let rstSegment = state.reset(.downstream)
        let rst = try #require(rstSegment)
        #expect(rst.flags == [.rst, .ack] && rst.source == self.server)
        #expect(rst.sequenceNumber == 5011 && rst.acknowledgmentNumber == 101)
        let secondReset = state.reset(.upstream)
        #expect(secondReset == nil)
        let dataAfterReset = state.data(length: 5, direction: .upstream)
        #expect(dataAfterReset == nil)
        let finAfterReset = state.end(.upstream)
        #expect(finAfterReset.isEmpty)
    }

    @Test("sequence numbers wrap around 2^32")
    func wraparound() throws {
        var state = TCPConversationState(
            client: self.client,
            server: self.server,
            clientInitialSequence: 0xFFFF_FFFE,
            serverInitialSequence: 0
        )
        #expect(state.handshake[2].sequenceNumber == 0xFFFF_FFFF)
        _ = state.data(length: 3, direction: .upstream)
        #expect(state.clientNext == 2)
    }

    @Test("an IPv4 client talking to an IPv6 server is mapped to IPv6")
    func mixedFamilies() {
        let server = CaptureEndpoint(address: .v6(high: 0x2001_0DB8_0000_0000, low: 1), port: 80)
        let state = TCPConversationState(
            client: self.client,
            server: server,
            clientInitialSequence: 0,
            serverInitialSequence: 0
        )
        #expect(!state.isIPv4)
        #expect(state.client.address == .v6(high: 0, low: 0x0000_FFFF_7F00_0001))
        #expect(state.server == server)
    }
}
