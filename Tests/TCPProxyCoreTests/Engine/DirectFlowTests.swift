import Testing

@testable import TCPProxyCore

/// A scripted ``FlowIO``: each call takes the next answer from its list (`wouldBlock` when the list is
/// empty) and is recorded with the byte count it asked for.
final class ScriptedFlowIO: FlowIO {
    var fills: [FlowStep]
    var drains: [FlowStep]
    var shutdownError: CInt?
    private(set) var calls: [String] = []

    init(fills: [FlowStep] = [], drains: [FlowStep] = [], shutdownError: CInt? = nil) {
        self.fills = fills
        self.drains = drains
        self.shutdownError = shutdownError
    }

    func fill(max count: Int) -> FlowStep {
        self.calls.append("fill \(count)")
        return self.fills.isEmpty ? .wouldBlock : self.fills.removeFirst()
    }

    func drain(max count: Int, finishing: Bool) -> FlowStep {
        self.calls.append(finishing ? "drain \(count) finishing" : "drain \(count)")
        return self.drains.isEmpty ? .wouldBlock : self.drains.removeFirst()
    }

    func shutdownSink() -> CInt? {
        self.calls.append("shutdown")
        return self.shutdownError
    }
}

@Suite("Splice flow (one direction, no sockets)")
struct DirectFlowTests {
    @Test("moves what the source has to the sink and stops at EAGAIN on both")
    func movesUntilBlocked() {
        var flow = DirectFlow(capacity: 65536)
        let io = ScriptedFlowIO(fills: [.moved(65536), .moved(1000)], drains: [.moved(65536), .moved(1000)])
        #expect(flow.pump(io) == .blocked)
        #expect(flow.moved == 66536)
        #expect(flow.held == 0)
        #expect(io.calls == ["fill 65536", "drain 65536", "fill 65536", "drain 1000", "fill 65536"])
    }

    @Test("never asks the source for more than the pipe has room for (SPEC §2 rule 4)")
    func boundedByCapacity() {
        var flow = DirectFlow(capacity: 4096)
        // The sink takes nothing: the pipe fills and reading stops.
        let io = ScriptedFlowIO(fills: [.moved(3000), .moved(1096), .moved(1)])
        #expect(flow.pump(io) == .blocked)
        #expect(flow.held == 4096)
        #expect(io.calls == ["fill 4096", "drain 3000", "fill 1096", "drain 4096", "drain 4096"])
        #expect(io.fills == [.moved(1)], "no read once the pipe holds the high-water mark")
    }

    @Test("a full sink resumes: the held bytes go first, then the source is read again")
    func resumesAfterSinkBlocked() {
        var flow = DirectFlow(capacity: 8192)
        var io = ScriptedFlowIO(fills: [.moved(8192)])
        #expect(flow.pump(io) == .blocked)
        #expect(flow.held == 8192)
        io = ScriptedFlowIO(fills: [.moved(100)], drains: [.moved(8192), .moved(100)])
        #expect(flow.pump(io) == .blocked)
        #expect(io.calls == ["drain 8192", "fill 8192", "drain 100", "fill 8192"])
        #expect(flow.held == 0)
    }

    @Test("EOF from the source becomes SHUT_WR on the sink only after the pipe drained (rule 5)")
    func eofAfterDrain() {
        var flow = DirectFlow(capacity: 65536)
        var io = ScriptedFlowIO(fills: [.moved(500), .endOfStream])
        #expect(flow.pump(io) == .blocked)
        #expect(flow.sourceEnded)
        #expect(!flow.sinkShut, "500 bytes still held")
        #expect(!io.calls.contains("shutdown"))
        io = ScriptedFlowIO(drains: [.moved(500)])
        #expect(flow.pump(io) == .blocked)
        #expect(io.calls == ["drain 500 finishing", "shutdown"], "the write says the FIN follows it")
        #expect(flow.isFinished)
        io = ScriptedFlowIO()
        #expect(flow.pump(io) == .blocked)
        #expect(io.calls.isEmpty, "a finished flow makes no calls")
    }

    @Test("a read error is the source's reset, a write or shutdown error the sink's")
    func failures() {
        var flow = DirectFlow(capacity: 65536)
        #expect(flow.pump(ScriptedFlowIO(fills: [.failed(104)])) == .sourceFailed)
        flow = DirectFlow(capacity: 65536)
        #expect(flow.pump(ScriptedFlowIO(fills: [.moved(10)], drains: [.failed(32)])) == .sinkFailed)
        flow = DirectFlow(capacity: 65536)
        #expect(flow.pump(ScriptedFlowIO(fills: [.endOfStream], shutdownError: 107)) == .sinkFailed)
    }

    @Test("stops after the round limit while bytes keep coming, so other bridges get a turn")
    func yields() {
        var flow = DirectFlow(capacity: 1024)
        let io = ScriptedFlowIO(
            fills: Array(repeating: .moved(1024), count: 10),
            drains: Array(repeating: .moved(1024), count: 10)
        )
        #expect(flow.pump(io, rounds: 4) == .yielded)
        #expect(flow.moved == 4096)
    }

    @Test(
        "a pass runs many rounds per pump only while its work is for one bridge, one round each when for several",
        arguments: [
            (bridges: [UInt64](), rounds: DirectEngineLoop.soloRounds),
            (bridges: [7], rounds: DirectEngineLoop.soloRounds),
            // One bridge's new bytes and its own turn waiting from the last pass.
            (bridges: [7, 7, 7], rounds: DirectEngineLoop.soloRounds),
            (bridges: [7, 9], rounds: 1),
            (bridges: [7, 7, 9, 7], rounds: 1),
        ]
    )
    func roundsPerPass(_ pass: (bridges: [UInt64], rounds: Int)) {
        var work = PassWork()
        for bridge in pass.bridges { work.add(bridge: bridge) }
        #expect(work.rounds == pass.rounds)
    }

    @Test("one round per pump reads a chunk, writes it and yields while the source has more")
    func oneRound() {
        var flow = DirectFlow(capacity: 1024)
        let io = ScriptedFlowIO(fills: [.moved(1024), .moved(1024)], drains: [.moved(1024), .moved(1024)])
        #expect(flow.pump(io, rounds: 1) == .yielded)
        #expect(io.calls == ["fill 1024", "drain 1024"])
        #expect(flow.held == 0)
    }

    @Test("a last round whose short read emptied the source and whose write took everything does not yield")
    func lastRoundDrained() {
        var flow = DirectFlow(capacity: 1024)
        let io = ScriptedFlowIO(fills: [.moved(100)], drains: [.moved(100)])
        #expect(flow.pump(io, rounds: 1, stopAtShortRead: true) == .blocked)
        #expect(io.calls == ["fill 1024", "drain 100"])
    }

    @Test("a last round whose write left bytes behind yields, so they are written on the next turn")
    func lastRoundHolding() {
        var flow = DirectFlow(capacity: 1024)
        let io = ScriptedFlowIO(fills: [.moved(100)], drains: [.moved(60)])
        #expect(flow.pump(io, rounds: 1, stopAtShortRead: true) == .yielded)
        #expect(flow.held == 40)
    }

    @Test("a direction that ended on NIO starts finished and makes no calls")
    func startsEnded() {
        var flow = DirectFlow(capacity: 65536, ended: true)
        let io = ScriptedFlowIO(fills: [.moved(1)])
        #expect(flow.isFinished)
        #expect(flow.pump(io) == .blocked)
        #expect(io.calls.isEmpty)
    }
}

@Suite("Splice link state (both directions, no sockets)")
struct SpliceLinkStateTests {
    private func finished(_ capacity: Int = 4096) -> DirectFlow {
        DirectFlow(capacity: capacity, ended: true)
    }

    @Test("both directions finished: the bridge completes")
    func completes() {
        var state = DirectLinkState(upstream: self.finished(), downstream: self.finished())
        #expect(state.nextAction() == .end(.completed))
    }

    @Test("a side whose EOF was read and whose output is shut is closed while the other direction flows")
    func closesFinishedSide() {
        // The server sent EOF and the client got SHUT_WR; then the client sends EOF too, while bytes for
        // the server are still in the pipe.
        var upstream = DirectFlow(capacity: 4096)
        _ = upstream.pump(ScriptedFlowIO(fills: [.moved(100), .endOfStream]))
        var state = DirectLinkState(upstream: upstream, downstream: self.finished())
        #expect(state.nextAction() == .closeSocket(.client))
        #expect(state.nextAction() == .none)
        #expect(!state.clientOpen && state.serverOpen)
        _ = state.upstream.pump(ScriptedFlowIO(drains: [.moved(100)]))
        #expect(state.nextAction() == .end(.completed))
    }

    @Test("open directions: nothing to do")
    func nothing() {
        var state = DirectLinkState(upstream: DirectFlow(capacity: 1), downstream: DirectFlow(capacity: 1))
        #expect(state.nextAction() == .none)
    }

    @Test("a socket is watched for reading while its pipe has room, for writing while bytes wait for it")
    func interest() {
        var state = DirectLinkState(upstream: DirectFlow(capacity: 4096), downstream: DirectFlow(capacity: 4096))
        #expect(state.interest(.client) == (readable: true, writable: false))
        #expect(state.interest(.server) == (readable: true, writable: false))
        // The server takes nothing: the upstream pipe fills.
        #expect(state.upstream.pump(ScriptedFlowIO(fills: [.moved(4096)])) == .blocked)
        #expect(state.interest(.client) == (readable: false, writable: false), "a full pipe: the client is left alone")
        #expect(state.interest(.server) == (readable: true, writable: true), "the server is watched until it takes more")
        #expect(state.upstream.pump(ScriptedFlowIO(fills: [.endOfStream], drains: [.moved(4096)])) == .blocked)
        #expect(state.interest(.client) == (readable: false, writable: false), "the client's EOF was read")
        #expect(state.interest(.server) == (readable: true, writable: false))
    }

    @Test(
        "a failure names the side whose socket failed (rule 6b)",
        arguments: [
            (DirectFlow.Outcome.sourceFailed, Direction.upstream, CloseReason.clientReset),
            (.sinkFailed, .upstream, .serverReset),
            (.sourceFailed, .downstream, .serverReset),
            (.sinkFailed, .downstream, .clientReset),
        ]
    )
    func failureReason(outcome: DirectFlow.Outcome, direction: Direction, reason: CloseReason) {
        #expect(DirectLinkState.failure(outcome, in: direction) == reason)
        #expect(DirectLinkState.failure(.blocked, in: direction) == nil)
        #expect(DirectLinkState.failure(.yielded, in: direction) == nil)
    }
}

@Suite("Splice trigger (auto)")
struct SpliceTriggerTests {
    @Test("a run of sizeable reads adding up to 512 KiB in one direction makes a bridge bulk")
    func bulk() {
        var trigger = SpliceTrigger(highWaterMark: 64 * 1024)
        for _ in 0..<7 { #expect(trigger.read(65536, .upstream) == false) }
        #expect(!trigger.isBulk)
        #expect(trigger.read(65536, .upstream) == true)
        #expect(trigger.isBulk)
        #expect(trigger.read(10, .upstream) == false)
        #expect(!trigger.isBulk, "a small read ends the run")
        var smaller = SpliceTrigger(highWaterMark: 64 * 1024)
        for _ in 0..<63 { #expect(smaller.read(8192, .downstream) == false) }
        #expect(smaller.read(8192, .downstream) == true, "8 KiB reads count too, 64 of them")
    }

    @Test("small reads (request/response) never do, and one small read starts the run again")
    func requestResponse() {
        var trigger = SpliceTrigger(highWaterMark: 64 * 1024)
        for _ in 0..<10_000 {
            #expect(trigger.read(129, .downstream) == false)
            #expect(trigger.read(8000, .upstream) == false)
            #expect(trigger.read(80, .upstream) == false)
        }
        for _ in 0..<7 { #expect(trigger.read(65536, .downstream) == false) }
        #expect(trigger.read(100, .downstream) == false)
        for _ in 0..<7 { #expect(trigger.read(65536, .downstream) == false) }
        #expect(trigger.read(65536, .downstream) == true)
    }

    @Test("directions are counted apart")
    func perDirection() {
        var trigger = SpliceTrigger(highWaterMark: 64 * 1024)
        for _ in 0..<7 {
            #expect(trigger.read(65536, .upstream) == false)
            #expect(trigger.read(10, .downstream) == false)
        }
        #expect(trigger.read(65536, .upstream) == true)
    }

    @Test("a small high-water mark makes the run shorter")
    func smallHighWaterMark() {
        var trigger = SpliceTrigger(highWaterMark: 512)
        for _ in 0..<7 { #expect(trigger.read(1024, .upstream) == false) }
        #expect(trigger.read(1024, .upstream) == true)
    }
}
