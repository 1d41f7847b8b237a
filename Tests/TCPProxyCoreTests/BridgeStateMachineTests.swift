import Testing

@testable import TCPProxyCore

@Suite("Bridge state machine")
struct BridgeStateMachineTests {
    /// A machine whose server connection is up.
    private func forwarding() -> BridgeStateMachine {
        var machine = BridgeStateMachine()
        #expect(machine.connectSucceeded() == .startForwarding(thenShutdownServerOutput: false))
        return machine
    }

    @Test("a successful connect starts forwarding")
    func connectStartsForwarding() {
        var machine = BridgeStateMachine()
        #expect(!machine.isForwarding)
        #expect(machine.connectSucceeded() == .startForwarding(thenShutdownServerOutput: false))
        #expect(machine.isForwarding)
    }

    @Test("client EOF before the server is up is passed on after the early data")
    func earlyClientEOF() {
        var machine = BridgeStateMachine()
        #expect(machine.inputClosed(on: .client) == .none)
        #expect(machine.connectSucceeded() == .startForwarding(thenShutdownServerOutput: true))
    }

    @Test("a failed connect closes the client with connectFailed, a timed-out one with connectTimeout")
    func connectFailure() {
        for (timedOut, reason) in [(false, CloseReason.connectFailed), (true, .connectTimeout)] {
            var machine = BridgeStateMachine()
            #expect(machine.connectFailed(timedOut: timedOut) == .close(reason))
            #expect(machine.serverNeverOpened() == .none)
            #expect(machine.channelClosed(.client) == .report(reason))
        }
    }

    @Test("a client that leaves while connecting ends the bridge, and a late connect is closed")
    func clientLeavesWhileConnecting() {
        var machine = BridgeStateMachine()
        #expect(machine.channelClosed(.client) == .close(.clientReset))
        #expect(machine.connectSucceeded() == .close(.clientReset))
        #expect(machine.channelClosed(.server) == .report(.clientReset))
    }

    @Test("a server error while connecting waits for the connect result")
    func serverErrorWhileConnecting() {
        var machine = BridgeStateMachine()
        #expect(machine.errorCaught(on: .server) == .none)
        #expect(machine.connectFailed(timedOut: false) == .close(.connectFailed))
    }

    @Test("EOF from one side shuts down writing to the other, and the other direction keeps going")
    func halfClose() {
        var machine = self.forwarding()
        #expect(machine.inputClosed(on: .client) == .shutdownOutput(.server))
        #expect(machine.isForwarding)
        #expect(machine.outputClosed(on: .server) == .none)
        #expect(machine.inputClosed(on: .server) == .shutdownOutput(.client))
    }

    @Test("both EOFs and both sockets closed reports completed, in either order")
    func completed() {
        for first in [BridgeStateMachine.Side.client, .server] {
            var machine = self.forwarding()
            #expect(machine.inputClosed(on: first) == .shutdownOutput(first.partner))
            #expect(machine.inputClosed(on: first.partner) == .shutdownOutput(first))
            #expect(machine.channelClosed(first) == .none)
            #expect(machine.channelClosed(first.partner) == .report(.completed))
        }
    }

    @Test("output shut down after input closed asks to close that socket")
    func bothHalvesShut() {
        var machine = self.forwarding()
        #expect(machine.inputClosed(on: .server) == .shutdownOutput(.client))
        #expect(machine.inputClosed(on: .client) == .shutdownOutput(.server))
        #expect(machine.outputClosed(on: .server) == .closeChannel(.server))
    }

    @Test("a close after our write shutdown took effect counts as the peer's EOF and is passed on")
    func closeAfterOutputShutdownIsEOF() {
        var machine = self.forwarding()
        #expect(machine.inputClosed(on: .client) == .shutdownOutput(.server))
        #expect(machine.outputClosed(on: .server) == .none)
        #expect(machine.channelClosed(.server) == .shutdownOutput(.client))
        #expect(machine.channelClosed(.client) == .report(.completed))
    }

    @Test("a close while our write shutdown still waits for writes is a failed write: a reset")
    func closeBeforeOutputShutdownIsReset() {
        var machine = self.forwarding()
        #expect(machine.inputClosed(on: .client) == .shutdownOutput(.server))
        #expect(machine.channelClosed(.server) == .close(.serverReset))
        #expect(machine.channelClosed(.client) == .report(.serverReset))
    }

    @Test("a socket that closes while its direction is open ends the bridge as a reset")
    func unexpectedClose() {
        var machine = self.forwarding()
        #expect(machine.channelClosed(.server) == .close(.serverReset))
        #expect(machine.isClosing)
        #expect(machine.channelClosed(.client) == .report(.serverReset))

        var other = self.forwarding()
        #expect(other.channelClosed(.client) == .close(.clientReset))
        #expect(other.channelClosed(.server) == .report(.clientReset))
    }

    @Test("an error on either side closes both, and later events change nothing")
    func errorCloses() {
        var machine = self.forwarding()
        #expect(machine.errorCaught(on: .client) == .close(.clientReset))
        #expect(machine.errorCaught(on: .server) == .none)
        #expect(machine.inputClosed(on: .server) == .none)
        #expect(machine.abort(.stallTimeout) == .none)
        #expect(machine.channelClosed(.client) == .none)
        #expect(machine.channelClosed(.server) == .report(.clientReset))
        #expect(machine.channelClosed(.server) == .none)
    }

    @Test("a timeout ends the bridge with its own reason", arguments: [CloseReason.stallTimeout, .idleTimeout, .drainTimeout])
    func timeouts(reason: CloseReason) {
        var machine = self.forwarding()
        #expect(machine.abort(reason) == .close(reason))
        #expect(machine.channelClosed(.server) == .none)
        #expect(machine.channelClosed(.client) == .report(reason))
    }

    @Test("the first reason to end a bridge is the one reported")
    func firstReasonWins() {
        var machine = self.forwarding()
        #expect(machine.abort(.idleTimeout) == .close(.idleTimeout))
        #expect(machine.errorCaught(on: .server) == .none)
        #expect(machine.channelClosed(.client) == .none)
        #expect(machine.channelClosed(.server) == .report(.idleTimeout))
    }

    @Test("only resets and stalls close abortively")
    func abortive() {
        #expect(CloseReason.clientReset.isAbortive)
        #expect(CloseReason.serverReset.isAbortive)
        #expect(CloseReason.stallTimeout.isAbortive)
        #expect(!CloseReason.completed.isAbortive)
        #expect(!CloseReason.idleTimeout.isAbortive)
        #expect(!CloseReason.drainTimeout.isAbortive)
    }

    @Test("splice readiness: open both ways, or a direction fully ended; never half way or while connecting")
    func spliceReadiness() {
        var connecting = BridgeStateMachine()
        #expect(connecting.spliceReadiness == nil)
        #expect(connecting.connectSucceeded() == .startForwarding(thenShutdownServerOutput: false))
        #expect(connecting.spliceReadiness == .init(upstreamEnded: false, downstreamEnded: false))

        var machine = self.forwarding()
        #expect(machine.inputClosed(on: .client) == .shutdownOutput(.server))
        #expect(machine.spliceReadiness == nil, "the shutdown towards the server has not taken effect yet")
        #expect(machine.outputClosed(on: .server) == .none)
        #expect(machine.spliceReadiness == .init(upstreamEnded: true, downstreamEnded: false))
        #expect(machine.inputClosed(on: .server) == .shutdownOutput(.client))
        #expect(machine.spliceReadiness == nil)
        #expect(machine.outputClosed(on: .client) == .closeChannel(.client))
        #expect(machine.spliceReadiness == nil, "both directions ended: nothing left to splice")

        var closing = self.forwarding()
        #expect(closing.errorCaught(on: .server) == .close(.serverReset))
        #expect(closing.spliceReadiness == nil)
    }
}
