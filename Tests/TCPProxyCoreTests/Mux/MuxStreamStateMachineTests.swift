import Testing

@testable import TCPProxyCore

@Suite("Mux stream state machine")
struct MuxStreamStateMachineTests {
    private func open(_ role: MuxStreamStateMachine.Role = .mux) -> MuxStreamStateMachine {
        var machine = MuxStreamStateMachine(role: role)
        #expect(machine.opened() == .startStream(sendEOF: false, shutdownLocalOutput: false))
        #expect(machine.isOpen)
        return machine
    }

    @Test("opening starts the stream; EOFs that came first are passed on")
    func earlyEOFs() {
        var machine = MuxStreamStateMachine(role: .demux)
        #expect(machine.remoteInputClosed() == .none)
        #expect(machine.opened() == .startStream(sendEOF: false, shutdownLocalOutput: true))

        var mux = MuxStreamStateMachine(role: .mux)
        #expect(mux.localInputClosed() == .none)
        #expect(!mux.localInputOpen)
        #expect(mux.opened() == .startStream(sendEOF: true, shutdownLocalOutput: false))
    }

    @Test("local EOF becomes one EOF frame; an EOF frame shuts down local output")
    func halfCloses() {
        var machine = self.open()
        #expect(machine.localInputClosed() == .sendEOF)
        #expect(machine.localInputClosed() == .none)
        #expect(machine.remoteInputClosed() == .shutdownLocalOutput)
        #expect(machine.remoteInputClosed() == .none)
        #expect(machine.localOutputClosed() == .closeLocal)
        #expect(machine.localClosed(holdingBytes: false) == .report(.completed, .none))
        #expect(machine.localClosed(holdingBytes: false) == .none)
    }

    @Test("remote EOF first, then local EOF: the local socket closes after both")
    func remoteFirst() {
        var machine = self.open()
        #expect(machine.remoteInputClosed() == .shutdownLocalOutput)
        #expect(machine.localOutputClosed() == .none)
        #expect(machine.localInputClosed() == .sendEOF)
        #expect(machine.localClosed(holdingBytes: false) == .report(.completed, .none))
    }

    @Test("a local close after our write shutdown is the local peer's EOF: EOF frame, completed")
    func closeAfterShutdownIsEOF() {
        var machine = self.open()
        #expect(machine.remoteInputClosed() == .shutdownLocalOutput)
        #expect(machine.localClosed(holdingBytes: false) == .report(.completed, .eof))
    }

    @Test("a local socket that closes with a direction open resets the stream", arguments: [
        (MuxStreamStateMachine.Role.mux, CloseReason.clientReset), (.demux, .serverReset),
    ])
    func unexpectedClose(role: MuxStreamStateMachine.Role, reason: CloseReason) {
        var machine = self.open(role)
        #expect(machine.localClosed(holdingBytes: false) == .report(reason, .reset(.connectionReset)))
    }

    @Test("a local error sends RESET and closes; the close then reports the same reason")
    func localError() {
        var machine = self.open(.mux)
        #expect(machine.localError() == .reset(.connectionReset, .clientReset))
        #expect(machine.localError() == .none)
        #expect(machine.remoteReset(.connectionReset) == .none)
        #expect(machine.localClosed(holdingBytes: false) == .report(.clientReset, .none))
    }

    @Test("a RESET frame closes the local socket with the peer's reason", arguments: [
        (MuxErrorCode.connectionReset, MuxStreamStateMachine.Role.mux, CloseReason.serverReset),
        (.connectionReset, .demux, .clientReset),
        (.connectFailed, .mux, .connectFailed),
        (.connectTimeout, .mux, .connectTimeout),
        (.refusedStream, .mux, .connectFailed),
        (.stallTimeout, .mux, .stallTimeout),
        (MuxErrorCode(rawValue: 999), .mux, .serverReset),
    ])
    func remoteReset(code: MuxErrorCode, role: MuxStreamStateMachine.Role, reason: CloseReason) {
        var machine = self.open(role)
        #expect(machine.remoteReset(code) == .abortLocal(reason))
        #expect(machine.isClosing)
        #expect(machine.localInputClosed() == .none)
        #expect(machine.localClosed(holdingBytes: false) == .report(reason, .none))
    }

    @Test("the tunnel dropping resets every open stream")
    func tunnelClosed() {
        var mux = self.open(.mux)
        #expect(mux.tunnelClosed() == .abortLocal(.serverReset))
        var demux = self.open(.demux)
        #expect(demux.tunnelClosed() == .abortLocal(.clientReset))
    }

    @Test("timeouts and drain reset the stream with their own code")
    func aborts() {
        for (reason, code) in [(CloseReason.stallTimeout, MuxErrorCode.stallTimeout), (.idleTimeout, .idleTimeout), (.drainTimeout, .drainTimeout)] {
            var machine = self.open()
            #expect(machine.abort(reason) == .reset(code, reason))
            #expect(machine.abort(reason) == .none)
            #expect(machine.localClosed(holdingBytes: false) == .report(reason, .none))
        }
    }

    /// Both EOFs seen, then the local socket closes while what it sent still waits for credit.
    private func finishing(_ role: MuxStreamStateMachine.Role, eofAtClose: Bool) -> MuxStreamStateMachine {
        var machine = self.open(role)
        if !eofAtClose { #expect(machine.localInputClosed() == .sendEOF) }
        #expect(machine.remoteInputClosed() == .shutdownLocalOutput)
        #expect(machine.localClosed(holdingBytes: true) == .finishSending)
        #expect(machine.isFinishing)
        #expect(machine.isClosing)
        #expect(!machine.localInputOpen)
        #expect(machine.hasRemoteEOF)
        return machine
    }

    @Test("finishing: a local close after both EOFs with bytes held waits for them, then completes", arguments: [false, true])
    func finishingCompletes(eofAtClose: Bool) {
        var machine = self.finishing(.mux, eofAtClose: eofAtClose)
        // The local end's events are over; a second close, EOF or error changes nothing.
        #expect(machine.localClosed(holdingBytes: true) == .none)
        #expect(machine.localInputClosed() == .none)
        #expect(machine.remoteInputClosed() == .none)
        #expect(machine.localError() == .none)
        #expect(machine.sentLastBytes() == .report(.completed, .none))
        #expect(!machine.isFinishing)
        #expect(machine.sentLastBytes() == .none)
        #expect(machine.tunnelClosed() == .none)
    }

    @Test("finishing: a RESET ends it with the peer's reason, nothing more sent", arguments: [
        (MuxErrorCode.connectionReset, MuxStreamStateMachine.Role.mux, CloseReason.serverReset),
        (.connectionReset, .demux, .clientReset),
        (.stallTimeout, .demux, .stallTimeout),
        (.drainTimeout, .mux, .drainTimeout),
    ])
    func finishingReset(code: MuxErrorCode, role: MuxStreamStateMachine.Role, reason: CloseReason) {
        var machine = self.finishing(role, eofAtClose: false)
        #expect(machine.remoteReset(code) == .report(reason, .none))
        #expect(machine.sentLastBytes() == .none)
    }

    @Test("finishing: the tunnel dropping ends it as the far end's reset", arguments: [
        (MuxStreamStateMachine.Role.mux, CloseReason.serverReset), (.demux, .clientReset),
    ])
    func finishingTunnelClosed(role: MuxStreamStateMachine.Role, reason: CloseReason) {
        var machine = self.finishing(role, eofAtClose: true)
        #expect(machine.tunnelClosed() == .report(reason, .none))
        #expect(machine.remoteReset(.connectionReset) == .none)
    }

    @Test("finishing: the stall timeout or the drain sends RESET with its code", arguments: [
        (CloseReason.stallTimeout, MuxErrorCode.stallTimeout), (.drainTimeout, .drainTimeout),
    ])
    func finishingAbort(reason: CloseReason, code: MuxErrorCode) {
        var machine = self.finishing(.demux, eofAtClose: false)
        #expect(machine.abort(reason) == .report(reason, .reset(code)))
        #expect(machine.abort(reason) == .none)
        #expect(machine.sentLastBytes() == .none)
    }

    @Test("bytes held at a close with a direction open do not make it finishing")
    func heldBytesWithDirectionOpen() {
        var machine = self.open(.mux)
        #expect(machine.localInputClosed() == .sendEOF)
        #expect(machine.localClosed(holdingBytes: true) == .report(.clientReset, .reset(.connectionReset)))
        #expect(!machine.isFinishing)
    }

    @Test("demux: a failed connect resets with connectFailed or connectTimeout")
    func connectFailed() {
        for (timedOut, reason, code) in [(false, CloseReason.connectFailed, MuxErrorCode.connectFailed), (true, .connectTimeout, .connectTimeout)] {
            var machine = MuxStreamStateMachine(role: .demux)
            #expect(machine.connectFailed(timedOut: timedOut) == .reset(code, reason))
            #expect(machine.localClosed(holdingBytes: false) == .report(reason, .none))
        }
    }

    @Test("demux: a stream reset while connecting closes the connection that comes up late")
    func resetWhileConnecting() {
        var machine = MuxStreamStateMachine(role: .demux)
        #expect(machine.remoteReset(.connectionReset) == .abortLocal(.clientReset))
        #expect(machine.opened() == .abortLocal(.clientReset))
        #expect(machine.localClosed(holdingBytes: false) == .report(.clientReset, .none))
    }

    @Test("mux: a client that leaves while waiting for the tunnel ends with nothing sent")
    func clientLeavesWhileWaiting() {
        var machine = MuxStreamStateMachine(role: .mux)
        #expect(machine.localClosed(holdingBytes: false) == .report(.clientReset, .none))
    }

    @Test("mux: no tunnel within the connect timeout")
    func waitTimeout() {
        var machine = MuxStreamStateMachine(role: .mux)
        #expect(machine.abort(.connectTimeout) == .reset(.connectTimeout, .connectTimeout))
        #expect(machine.localClosed(holdingBytes: false) == .report(.connectTimeout, .none))
    }
}

@Suite("Mux window and backoff")
struct MuxWindowTests {
    @Test("sending uses credit; a grant restores it; more than 2^31-1 is an error")
    func sendCredit() throws {
        var window = MuxWindow(receiveWindow: 1000, initialCredit: 1000)
        window.sent(600)
        #expect(window.sendCredit == 400)
        window.sent(400)
        #expect(window.sendCredit == 0)
        try window.granted(250)
        #expect(window.sendCredit == 250)
        #expect(throws: MuxProtocolError.badWindowIncrement(UInt32(Int32.max))) { try window.granted(UInt32(Int32.max)) }
        #expect(window.sendCredit == 250)
    }

    @Test("a stream starts with the protocol's credit each way; the receiver announces the rest of its window")
    func announcement() throws {
        var window = MuxWindow(receiveWindow: 256 * 1024)
        #expect(window.sendCredit == 16 * 1024, "until the peer announces its window")
        #expect(window.receiveCredit == 256 * 1024, "ours is announced at once")
        #expect(window.announcement == UInt32(240 * 1024))
        try window.granted(UInt32(1024 * 1024 - 16 * 1024))  // a peer whose window is 1 MiB
        #expect(window.sendCredit == 1024 * 1024)
        #expect(MuxWindow(receiveWindow: 16 * 1024).announcement == nil)
        // Grants go back in quarters of our own window, whatever the peer's.
        try window.received(64 * 1024)
        #expect(window.delivered(64 * 1024 - 1) == nil)
        #expect(window.delivered(1) == UInt32(64 * 1024))
    }

    @Test("receiving beyond the credit is a flow-control violation")
    func receiveCredit() throws {
        var window = MuxWindow(receiveWindow: 1000, initialCredit: 1000)
        try window.received(1000)
        #expect(window.receiveCredit == 0)
        #expect(throws: MuxProtocolError.self) { try window.received(1) }
    }

    @Test("credit is granted back only as bytes are written out, in quarter-window steps")
    func grantsOnDelivery() throws {
        var window = MuxWindow(receiveWindow: 1000, initialCredit: 1000)
        try window.received(1000)
        #expect(window.delivered(100) == nil)
        #expect(window.delivered(149) == nil)
        #expect(window.delivered(1) == 250)
        #expect(window.receiveCredit == 250)
        #expect(window.unacknowledged == 0)
        #expect(window.delivered(750) == 750)
        #expect(window.receiveCredit == 1000)
        // Nothing delivered, nothing granted: a stalled reader stops its sender.
        try window.received(1000)
        #expect(window.receiveCredit == 0)
    }

    @Test("reconnect backoff doubles from 100 ms to a 5 s cap, with jitter, and resets")
    func backoff() {
        var backoff = MuxBackoff()
        let delays = (0..<8).map { _ in backoff.nextDelay(random: 0.5).nanoseconds / 1_000_000 }
        #expect(delays == [100, 200, 400, 800, 1600, 3200, 5000, 5000])
        #expect(backoff.nextDelay(random: 0).nanoseconds == 4_000_000_000)
        #expect(backoff.nextDelay(random: 0.999_999).nanoseconds / 1_000_000 == 5999)
        backoff.reset()
        #expect(backoff.nextDelay(random: 0.5).nanoseconds == 100_000_000)
    }
}
