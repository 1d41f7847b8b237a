import NIOCore
import Testing

@testable import TCPProxyCore

@Suite("Bridge timeouts")
struct BridgeTimeoutsTests {
    private let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
    private let nothing = BridgeTimeouts.Sample(held: 0, delivered: 0)

    private func at(_ seconds: Double) -> NIODeadline {
        self.start + .nanoseconds(Int64(seconds * 1e9))
    }

    @Test("samples eight times per shortest timeout")
    func samplingInterval() {
        let both = BridgeTimeouts(stallTimeout: .seconds(10), idleTimeout: .seconds(4), now: self.start)
        #expect(both.samplingInterval == .milliseconds(500))
        let stallOnly = BridgeTimeouts(stallTimeout: .seconds(10), idleTimeout: nil, now: self.start)
        #expect(stallOnly.samplingInterval == .milliseconds(1250))
        #expect(!BridgeTimeouts(stallTimeout: nil, idleTimeout: nil, now: self.start).isEnabled)
    }

    @Test("with the metrics on, a busy bridge is sampled every report interval even with both timeouts off; a quiet one stops")
    func metricsReports() {
        var timeouts = BridgeTimeouts(stallTimeout: nil, idleTimeout: nil, reportInterval: .seconds(1), now: self.start)
        #expect(timeouts.isEnabled)
        #expect(timeouts.samplingInterval == .seconds(1))
        #expect(timeouts.tick(now: self.at(1), trafficBytes: 100, upstream: self.nothing, downstream: self.nothing) == .sampleAgain(in: .seconds(1)))
        #expect(timeouts.tick(now: self.at(2), trafficBytes: 900, upstream: self.nothing, downstream: self.nothing) == .sampleAgain(in: .seconds(1)))
        #expect(timeouts.tick(now: self.at(3), trafficBytes: 900, upstream: self.nothing, downstream: self.nothing) == .stop)
        // Held bytes keep it sampling (they are still to be written and counted), but never expire it.
        let held = BridgeTimeouts.Sample(held: 4096, delivered: 7)
        for second in 4...100 {
            #expect(timeouts.tick(now: self.at(Double(second)), trafficBytes: 900, upstream: held, downstream: self.nothing) == .sampleAgain(in: .seconds(1)))
        }
    }

    @Test("the report interval shortens the sampling of long timeouts, not of short ones")
    func reportIntervalAndTimeouts() {
        let long = BridgeTimeouts(stallTimeout: .seconds(60), idleTimeout: nil, reportInterval: .seconds(1), now: self.start)
        #expect(long.samplingInterval == .seconds(1))
        let short = BridgeTimeouts(stallTimeout: .seconds(4), idleTimeout: nil, reportInterval: .seconds(1), now: self.start)
        #expect(short.samplingInterval == .milliseconds(500))
    }

    @Test("a direction that holds data and delivers nothing expires after the stall timeout")
    func stall() {
        var timeouts = BridgeTimeouts(stallTimeout: .seconds(10), idleTimeout: nil, now: self.start)
        let stuck = BridgeTimeouts.Sample(held: 65536, delivered: 500)
        var time = 0.0
        var decision = timeouts.tick(now: self.at(time), trafficBytes: 1, upstream: stuck, downstream: self.nothing)
        while case .sampleAgain(let delay) = decision, time < 60 {
            time += Double(delay.nanoseconds) / 1e9
            decision = timeouts.tick(now: self.at(time), trafficBytes: 1, upstream: stuck, downstream: self.nothing)
        }
        #expect(decision == .expire(.stallTimeout))
        #expect(time >= 10 && time <= 10.001, "the tick lands on the deadline: \(time)")
    }

    @Test("a slow reader that keeps taking bytes is never stalled out")
    func slowProgress() {
        var timeouts = BridgeTimeouts(stallTimeout: .seconds(10), idleTimeout: nil, now: self.start)
        for step in 0..<100 {
            // The proxy's buffer stays full, but the peer acknowledges one more byte each tick.
            let sample = BridgeTimeouts.Sample(held: 65536, delivered: UInt64(step))
            let decision = timeouts.tick(
                now: self.at(Double(step) * 1.25),
                trafficBytes: 1,
                upstream: self.nothing,
                downstream: sample
            )
            #expect(decision == .sampleAgain(in: .milliseconds(1250)))
        }
    }

    @Test("holding nothing is never a stall, and with no idle timeout the timer stops")
    func nothingHeld() {
        var timeouts = BridgeTimeouts(stallTimeout: .seconds(1), idleTimeout: nil, now: self.start)
        #expect(
            timeouts.tick(now: self.at(0.25), trafficBytes: 10, upstream: self.nothing, downstream: self.nothing)
                == .sampleAgain(in: .milliseconds(125))
        )
        #expect(
            timeouts.tick(now: self.at(100), trafficBytes: 10, upstream: self.nothing, downstream: self.nothing)
                == .stop
        )
    }

    @Test("a stall is timed from the restart, not from before the timer stopped")
    func restart() {
        var timeouts = BridgeTimeouts(stallTimeout: .seconds(1), idleTimeout: nil, now: self.start)
        _ = timeouts.tick(now: self.at(0.25), trafficBytes: 10, upstream: self.nothing, downstream: self.nothing)
        timeouts.restart(now: self.at(50))
        let stuck = BridgeTimeouts.Sample(held: 10, delivered: 0)
        #expect(
            timeouts.tick(now: self.at(50.25), trafficBytes: 20, upstream: stuck, downstream: self.nothing)
                == .sampleAgain(in: .milliseconds(125))
        )
        #expect(
            timeouts.tick(now: self.at(51.1), trafficBytes: 20, upstream: stuck, downstream: self.nothing)
                == .expire(.stallTimeout)
        )
    }

    @Test("no traffic either way for the idle timeout expires; traffic resets it")
    func idle() {
        var timeouts = BridgeTimeouts(stallTimeout: nil, idleTimeout: .seconds(4), now: self.start)
        #expect(
            timeouts.tick(now: self.at(3), trafficBytes: 5, upstream: self.nothing, downstream: self.nothing)
                == .sampleAgain(in: .milliseconds(500))
        )
        // Traffic at 3 s moves the deadline to 7 s; at 6.75 s the next tick is aimed at it.
        #expect(
            timeouts.tick(now: self.at(6.75), trafficBytes: 5, upstream: self.nothing, downstream: self.nothing)
                == .sampleAgain(in: .milliseconds(250))
        )
        #expect(
            timeouts.tick(now: self.at(7), trafficBytes: 5, upstream: self.nothing, downstream: self.nothing)
                == .expire(.idleTimeout)
        )
    }

    @Test("a peer taking bytes from the kernel's send queue is traffic for the idle timeout, with nothing held and no stall timeout")
    func idleCountsDelivery() {
        var timeouts = BridgeTimeouts(stallTimeout: nil, idleTimeout: .seconds(1), now: self.start)
        // Nothing is read after the start; the server acknowledges 32 KiB every tick for 3 s.
        var time = 0.125
        while time < 3 {
            let draining = BridgeTimeouts.Sample(held: 0, delivered: UInt64(time * 8) * 32768)
            #expect(
                timeouts.tick(now: self.at(time), trafficBytes: 400_000, upstream: draining, downstream: self.nothing)
                    == .sampleAgain(in: .milliseconds(125)),
                "at \(time) s"
            )
            time += 0.125
        }
        // Then the send queue is empty: idle from the last delivery on.
        let done = BridgeTimeouts.Sample(held: 0, delivered: UInt64(3 * 8) * 32768)
        #expect(timeouts.tick(now: self.at(3), trafficBytes: 400_000, upstream: done, downstream: self.nothing) == .sampleAgain(in: .milliseconds(125)))
        #expect(timeouts.tick(now: self.at(3.5), trafficBytes: 400_000, upstream: done, downstream: self.nothing) == .sampleAgain(in: .milliseconds(125)))
        #expect(timeouts.tick(now: self.at(4), trafficBytes: 400_000, upstream: done, downstream: self.nothing) == .expire(.idleTimeout))
    }

    @Test("the first sample is the baseline: a count that starts at 1 (a connecting socket's) is no traffic")
    func firstSampleIsBaseline() {
        var timeouts = BridgeTimeouts(stallTimeout: nil, idleTimeout: .seconds(1), now: self.start)
        let handshake = BridgeTimeouts.Sample(held: 0, delivered: 1)
        var time = 0.0
        var decision = BridgeTimeouts.Decision.sampleAgain(in: .milliseconds(125))
        while case .sampleAgain(let delay) = decision, time < 5 {
            time += Double(delay.nanoseconds) / 1e9
            decision = timeouts.tick(now: self.at(time), trafficBytes: 0, upstream: handshake, downstream: handshake)
        }
        #expect(decision == .expire(.idleTimeout))
        #expect(abs(time - 1) < 0.001, "expired at \(time) s")
    }

    @Test("with only a stall timeout, a peer taking bytes while nothing is held does not keep the timer running")
    func deliveryWithoutIdleTimeout() {
        var timeouts = BridgeTimeouts(stallTimeout: .seconds(1), idleTimeout: nil, now: self.start)
        _ = timeouts.tick(now: self.at(0.125), trafficBytes: 10, upstream: self.nothing, downstream: self.nothing)
        let draining = BridgeTimeouts.Sample(held: 0, delivered: 5000)
        #expect(timeouts.tick(now: self.at(0.25), trafficBytes: 10, upstream: draining, downstream: self.nothing) == .stop)
    }

    @Test("bytes held outside the write buffers (delayed by --latency) keep the timer running")
    func heldElsewhere() {
        var timeouts = BridgeTimeouts(stallTimeout: .seconds(1), idleTimeout: nil, now: self.start)
        _ = timeouts.tick(now: self.at(0.125), trafficBytes: 10, upstream: self.nothing, downstream: self.nothing)
        #expect(
            timeouts.tick(
                now: self.at(0.25), trafficBytes: 10, upstream: self.nothing, downstream: self.nothing, heldElsewhere: true
            ) == .sampleAgain(in: .milliseconds(125))
        )
        #expect(
            timeouts.tick(now: self.at(0.375), trafficBytes: 10, upstream: self.nothing, downstream: self.nothing)
                == .stop
        )
    }
}
