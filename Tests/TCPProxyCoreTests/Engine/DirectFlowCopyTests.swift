import Testing

@testable import TCPProxyCore

/// The rules ``DirectFlow`` follows for the copy transport: a short read ends reading for the pump
/// (`stopAtShortRead`), and moving to pipes (`resize`) keeps what the flow has done.
@Suite("Direct flow on the copy path (one direction, no sockets)")
struct DirectFlowCopyTests {
    @Test("stopAtShortRead: a short read ends reading for this pump, with no extra fill call")
    func shortReadStops() {
        var flow = DirectFlow(capacity: 65536)
        let io = ScriptedFlowIO(fills: [.moved(100), .moved(7)], drains: [.moved(100)])
        #expect(flow.pump(io, stopAtShortRead: true) == .blocked)
        #expect(io.calls == ["fill 65536", "drain 100"], "no second read: the receive queue was empty")
        #expect(io.fills == [.moved(7)])
        #expect(flow.moved == 100)
        #expect(flow.held == 0)
    }

    @Test("stopAtShortRead: full reads go on; the first short one stops reading")
    func fullReadsContinue() {
        var flow = DirectFlow(capacity: 4096)
        let io = ScriptedFlowIO(
            fills: [.moved(4096), .moved(4096), .moved(10), .moved(1)],
            drains: [.moved(4096), .moved(4096), .moved(10)]
        )
        #expect(flow.pump(io, stopAtShortRead: true) == .blocked)
        #expect(io.calls == ["fill 4096", "drain 4096", "fill 4096", "drain 4096", "fill 4096", "drain 10"])
        #expect(io.fills == [.moved(1)], "nothing read after the short read")
        #expect(flow.moved == 8202)
    }

    @Test("stopAtShortRead: a read that fills what is left of the room is full, not short")
    func fullOfRemainingRoom() {
        var flow = DirectFlow(capacity: 4096)
        // The sink takes 1000 of 4096: the next read may only ask for 1000, and gets all of it, so the
        // source may have more: it is read again once the sink took everything.
        let io = ScriptedFlowIO(
            fills: [.moved(4096), .moved(1000), .moved(5), .moved(1)],
            drains: [.moved(1000), .moved(4096), .moved(5)]
        )
        #expect(flow.pump(io, stopAtShortRead: true) == .blocked)
        #expect(io.calls == ["fill 4096", "drain 4096", "fill 1000", "drain 4096", "fill 4096", "drain 5"])
        #expect(io.fills == [.moved(1)], "the 5-byte read was short: reading stopped there")
        #expect(flow.held == 0)
        #expect(flow.moved == 5101)
    }

    @Test("stopAtShortRead: held bytes are still written after the short read until the sink blocks")
    func drainsAfterShortRead() {
        var flow = DirectFlow(capacity: 65536)
        let io = ScriptedFlowIO(fills: [.moved(3000)], drains: [.moved(1000), .moved(1000), .wouldBlock])
        #expect(flow.pump(io, stopAtShortRead: true) == .blocked)
        #expect(io.calls == ["fill 65536", "drain 3000", "drain 2000", "drain 1000"])
        #expect(flow.held == 1000)
    }

    @Test("stopAtShortRead ends reading for one pump only: the next pump reads again")
    func nextPumpReads() {
        var flow = DirectFlow(capacity: 65536)
        let io = ScriptedFlowIO(fills: [.moved(10), .moved(20)], drains: [.moved(10), .moved(20)])
        #expect(flow.pump(io, stopAtShortRead: true) == .blocked)
        #expect(flow.pump(io, stopAtShortRead: true) == .blocked)
        #expect(io.calls == ["fill 65536", "drain 10", "fill 65536", "drain 20"])
        #expect(flow.moved == 30)
    }

    @Test("stopAtShortRead: EOF and failures are handled as without the flag")
    func eofAndFailures() {
        var flow = DirectFlow(capacity: 65536)
        let io = ScriptedFlowIO(fills: [.endOfStream])
        #expect(flow.pump(io, stopAtShortRead: true) == .blocked)
        #expect(io.calls == ["fill 65536", "shutdown"])
        #expect(flow.isFinished)
        flow = DirectFlow(capacity: 65536)
        #expect(flow.pump(ScriptedFlowIO(fills: [.failed(104)]), stopAtShortRead: true) == .sourceFailed)
        flow = DirectFlow(capacity: 65536)
        #expect(
            flow.pump(ScriptedFlowIO(fills: [.moved(10)], drains: [.failed(32)]), stopAtShortRead: true) == .sinkFailed
        )
    }

    @Test("without stopAtShortRead a short read does not end reading (the splice rule, and after the peer's FIN)")
    func withoutFlag() {
        var flow = DirectFlow(capacity: 65536)
        let io = ScriptedFlowIO(fills: [.moved(100), .moved(7), .endOfStream], drains: [.moved(100), .moved(7)])
        #expect(flow.pump(io) == .blocked)
        #expect(io.calls == ["fill 65536", "drain 100", "fill 65536", "drain 7", "fill 65536", "shutdown"])
        #expect(flow.isFinished, "reading on after short reads finds the FIN")
        #expect(flow.moved == 107)
    }

    @Test("endAtShortRead: after the peer's FIN a short read is the end of the stream, with no read of 0")
    func shortReadAfterFINEnds() {
        var flow = DirectFlow(capacity: 65536)
        let io = ScriptedFlowIO(fills: [.moved(129), .endOfStream], drains: [.moved(129)])
        #expect(flow.pump(io, stopAtShortRead: false, endAtShortRead: true) == .blocked)
        #expect(
            io.calls == ["fill 65536", "drain 129 finishing", "shutdown"],
            "EOF passed on once the bytes were written, which may leave their last segment for the FIN"
        )
        #expect(io.fills == [.endOfStream], "the read that would return 0 is not made")
        #expect(flow.isFinished)
        #expect(flow.moved == 129)
    }

    @Test("endAtShortRead: full reads go on; bytes the sink refuses are written before the shutdown")
    func fullReadsAfterFINContinue() {
        var flow = DirectFlow(capacity: 4096)
        var io = ScriptedFlowIO(fills: [.moved(4096), .moved(100)], drains: [.moved(4096), .moved(40), .wouldBlock])
        #expect(flow.pump(io, endAtShortRead: true) == .blocked)
        #expect(
            io.calls == ["fill 4096", "drain 4096", "fill 4096", "drain 100 finishing", "drain 60 finishing"],
            "only the writes after the source's end say the FIN follows"
        )
        #expect(flow.sourceEnded && !flow.sinkShut, "60 bytes still held: no EOF for the sink yet")
        io = ScriptedFlowIO(drains: [.moved(60)])
        #expect(flow.pump(io, endAtShortRead: true) == .blocked)
        #expect(io.calls == ["drain 60 finishing", "shutdown"], "the source is not read again once it ended")
        #expect(flow.isFinished)
    }

    @Test("endAtShortRead: a read that fills what is left of the room is not the end")
    func fullOfRoomAfterFIN() {
        var flow = DirectFlow(capacity: 4096)
        let io = ScriptedFlowIO(fills: [.moved(4096), .endOfStream], drains: [.moved(4096)])
        #expect(flow.pump(io, endAtShortRead: true) == .blocked)
        #expect(io.calls == ["fill 4096", "drain 4096", "fill 4096", "shutdown"])
        #expect(flow.isFinished)
    }

    @Test("closesSinkAtEnd: EOF is left to the close that follows, so no shutdown call is made")
    func lastDirectionSkipsShutdown() {
        var flow = DirectFlow(capacity: 65536)
        let io = ScriptedFlowIO(fills: [.moved(10), .endOfStream], drains: [.moved(10)], shutdownError: 32)
        #expect(flow.pump(io, closesSinkAtEnd: true) == .blocked)
        #expect(io.calls == ["fill 65536", "drain 10", "fill 65536"])
        #expect(flow.isFinished, "the direction is done: the bridge closes both sockets now")

        // Bytes still held keep the sink open: the direction finishes only once they are written.
        flow = DirectFlow(capacity: 65536)
        var held = ScriptedFlowIO(fills: [.moved(10), .endOfStream], drains: [.wouldBlock])
        #expect(flow.pump(held, closesSinkAtEnd: true) == .blocked)
        #expect(!flow.isFinished)
        held = ScriptedFlowIO(drains: [.moved(10)])
        #expect(flow.pump(held, closesSinkAtEnd: true) == .blocked)
        #expect(held.calls == ["drain 10 finishing"], "the close right after sends the FIN with these bytes")
        #expect(flow.isFinished)
    }

    @Test("stopAtShortRead still yields at the round limit while reads are full")
    func yieldsWithFlag() {
        var flow = DirectFlow(capacity: 1024)
        let io = ScriptedFlowIO(
            fills: Array(repeating: .moved(1024), count: 10),
            drains: Array(repeating: .moved(1024), count: 10)
        )
        #expect(flow.pump(io, rounds: 4, stopAtShortRead: true) == .yielded)
        #expect(flow.moved == 4096)
    }

    @Test("resize keeps the bytes moved and whether the source ended; later reads ask for the new capacity")
    func resizeKeepsState() {
        var flow = DirectFlow(capacity: 65536)
        #expect(flow.pump(ScriptedFlowIO(fills: [.moved(5000)], drains: [.moved(5000)]), stopAtShortRead: true) == .blocked)
        flow.resize(16384)
        #expect(flow.capacity == 16384)
        #expect(flow.moved == 5000)
        #expect(flow.held == 0)
        #expect(!flow.sourceEnded && !flow.sinkShut)
        let io = ScriptedFlowIO(fills: [.moved(16384)], drains: [.moved(16384)])
        #expect(flow.pump(io) == .blocked)
        #expect(io.calls == ["fill 16384", "drain 16384", "fill 16384"])
        #expect(flow.moved == 21384)

        // A direction that already ended stays ended (and makes no calls) after the move to pipes.
        var ended = DirectFlow(capacity: 65536)
        #expect(
            ended.pump(ScriptedFlowIO(fills: [.moved(3), .endOfStream], drains: [.moved(3)])) == .blocked
        )
        #expect(ended.isFinished)
        ended.resize(4096)
        #expect(ended.isFinished && ended.sourceEnded && ended.sinkShut)
        #expect(ended.moved == 3)
        let none = ScriptedFlowIO(fills: [.moved(1)])
        #expect(ended.pump(none) == .blocked)
        #expect(none.calls.isEmpty)

        // EOF read but not yet passed on (nothing held, the sink's shutdown pending) is kept as well.
        var link = DirectLinkState(upstream: DirectFlow(capacity: 65536), downstream: DirectFlow(capacity: 65536))
        _ = link.upstream.pump(ScriptedFlowIO(fills: [.endOfStream], shutdownError: 107))
        #expect(link.upstream.sourceEnded && !link.upstream.sinkShut)
        link.upstream.resize(4096)
        #expect(link.upstream.sourceEnded && !link.upstream.sinkShut)
        #expect(link.interest(.client).readable == false, "an ended source is not read again")
    }
}
