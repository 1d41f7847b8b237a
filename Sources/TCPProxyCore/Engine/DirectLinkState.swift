/// Both directions of a spliced bridge and which of its sockets are still open: decides, from what the
/// flows did, which socket to close and when the bridge ends (SPEC §2 rules 5 and 6), without I/O.
struct DirectLinkState: Equatable {
    typealias Side = BridgeStateMachine.Side

    /// What the engine must do next.
    enum Action: Equatable {
        /// Nothing.
        case none
        /// Both halves of this side's socket are done (its EOF read, our `SHUT_WR` sent): close it.
        case closeSocket(Side)
        /// End the bridge for this reason: close whatever is still open.
        case end(CloseReason)
    }

    /// Client → server.
    var upstream: DirectFlow
    /// Server → client.
    var downstream: DirectFlow
    private(set) var clientOpen = true
    private(set) var serverOpen = true

    init(upstream: DirectFlow, downstream: DirectFlow) {
        self.upstream = upstream
        self.downstream = downstream
    }

    /// The next thing to do after the flows moved; call until it returns ``Action/none``.
    mutating func nextAction() -> Action {
        if self.upstream.isFinished && self.downstream.isFinished {
            return .end(.completed)
        }
        if self.clientOpen && self.upstream.sourceEnded && self.downstream.sinkShut {
            self.clientOpen = false
            return .closeSocket(.client)
        }
        if self.serverOpen && self.downstream.sourceEnded && self.upstream.sinkShut {
            self.serverOpen = false
            return .closeSocket(.server)
        }
        return .none
    }

    /// The reason a failed pump ends the bridge with: the side whose socket failed reset (rule 6b).
    /// - Parameters:
    ///   - outcome: what the pump of `direction` ended with.
    ///   - direction: the flow that was pumped.
    static func failure(_ outcome: DirectFlow.Outcome, in direction: Direction) -> CloseReason? {
        switch (outcome, direction) {
        case (.sourceFailed, .upstream), (.sinkFailed, .downstream): .clientReset
        case (.sourceFailed, .downstream), (.sinkFailed, .upstream): .serverReset
        case (.blocked, _), (.yielded, _): nil
        }
    }

    /// What a side's socket needs to be watched for: readable while the flow reading it has room (a
    /// source whose pipe is full is left alone until the pipe drains), writable while the flow into it
    /// holds bytes the socket refused. Edge-triggered readiness for anything else only wakes the
    /// engine for nothing: a bulk transfer's receiver frees send-buffer space with every ACK.
    func interest(_ side: Side) -> (readable: Bool, writable: Bool) {
        let from = side == .client ? self.upstream : self.downstream
        let to = side == .client ? self.downstream : self.upstream
        return (!from.sourceEnded && from.held < from.capacity, to.held > 0)
    }

    /// The flow that reads from `side`.
    static func direction(from side: Side) -> Direction {
        side == .client ? .upstream : .downstream
    }
}
