import NIOCore
import Testing

@testable import TCPProxyCore

@Suite("Target balancer")
struct TargetBalancerTests {
    private let now = NIODeadline.uptimeNanoseconds(1_000_000_000)

    private func firsts(_ balancer: inout TargetBalancer, _ count: Int) -> [Int] {
        (0..<count).map { _ in balancer.order(now: self.now).order[0] }
    }

    @Test("round-robin gives each target its weight's share, interleaved")
    func roundRobin() {
        var equal = TargetBalancer(weights: [1, 1, 1], algorithm: .roundrobin, retryAfter: nil)
        #expect(self.firsts(&equal, 6) == [0, 1, 2, 0, 1, 2])
        var weighted = TargetBalancer(weights: [5, 1, 1], algorithm: .roundrobin, retryAfter: nil)
        let picks = self.firsts(&weighted, 7)
        #expect(picks.filter { $0 == 0 }.count == 5)
        #expect(picks == [0, 0, 1, 0, 2, 0, 0], "smooth: the heavy target's turns are spread out")
    }

    @Test("the order lists the pick, the other up targets, then the down ones")
    func order() {
        var balancer = TargetBalancer(weights: [1, 1, 1], algorithm: .roundrobin, retryAfter: nil)
        #expect(balancer.connectFailed(0, now: self.now) == .down(0))
        let order = balancer.order(now: self.now).order
        #expect(order.count == 3)
        #expect(order.last == 0, "the down target is the last resort")
        #expect(Set(order) == [0, 1, 2])
    }

    @Test("leastconn picks the target with the fewest open bridges per weight, rotating ties")
    func leastconn() {
        var balancer = TargetBalancer(weights: [1, 1, 2], algorithm: .leastconn, retryAfter: nil)
        #expect(self.firsts(&balancer, 3) == [0, 1, 2], "ties rotate")
        _ = balancer.connected(0)
        _ = balancer.connected(1)
        _ = balancer.connected(2)
        // 1/1, 1/1, 1/2: the double-weight target has the most room.
        #expect(balancer.order(now: self.now).order[0] == 2)
        _ = balancer.connected(2)
        _ = balancer.connected(2)
        // 1, 1, 3/2: target 0 or 1.
        #expect(balancer.order(now: self.now).order[0] != 2)
        balancer.released(2)
        balancer.released(2)
        balancer.released(2)
        #expect(balancer.order(now: self.now).order[0] == 2)
    }

    @Test("random picks in proportion to weight")
    func random() {
        var balancer = TargetBalancer(weights: [3, 1], algorithm: .random, retryAfter: nil, random: RandomSource(seed: 9))
        let picks = self.firsts(&balancer, 4000)
        let share = Double(picks.filter { $0 == 0 }.count) / 4000
        #expect(share > 0.70 && share < 0.80)
    }

    @Test("a failed connect marks a target down at once; a success or a retry brings it back")
    func passive() {
        var balancer = TargetBalancer(weights: [1, 1], algorithm: .roundrobin, retryAfter: .seconds(5))
        #expect(balancer.connectFailed(1, now: self.now) == .down(1))
        #expect(balancer.connectFailed(1, now: self.now) == nil, "already down")
        #expect(balancer.order(now: self.now + .seconds(4)).changes.isEmpty)
        #expect(balancer.order(now: self.now + .seconds(5)).changes == [.up(1)], "given another chance")
        #expect(balancer.connectFailed(0, now: self.now) == .down(0))
        #expect(balancer.connected(0) == .up(0), "a last-resort connect that works brings it back")
    }

    @Test("health checks: fall failures take a target down, rise successes bring it back")
    func health() {
        var balancer = TargetBalancer(weights: [1], algorithm: .roundrobin, rise: 2, fall: 3, retryAfter: nil)
        #expect(balancer.checked(0, healthy: false) == nil)
        #expect(balancer.checked(0, healthy: false) == nil)
        #expect(balancer.checked(0, healthy: false) == .down(0))
        #expect(balancer.checked(0, healthy: true) == nil)
        #expect(balancer.checked(0, healthy: false) == nil, "a failure resets the run of successes")
        #expect(balancer.checked(0, healthy: true) == nil)
        #expect(balancer.checked(0, healthy: true) == .up(0))
        #expect(balancer.order(now: self.now + .seconds(3600)).changes.isEmpty, "no timed retry with health checks")
    }

    @Test("targets parse with optional weights", arguments: [("h:1", 1), ("h:1,weight=7", 7), ("[::1]:80,weight=1000", 1000)])
    func spec(text: String, weight: Int) throws {
        #expect(try TargetSpec(parsing: text).weight == weight)
    }

    @Test("bad targets are refused", arguments: ["h:1,weight=0", "h:1,weight=1001", "h:1,w=2", "h:1,weight=", "h", "h:1,weight=2,weight=3", "h:1,weight=2,"])
    func badSpec(text: String) {
        #expect(throws: (any Error).self) { try TargetSpec(parsing: text) }
    }
}
