import NIOCore

/// How `forward` spreads clients over several targets (`--balance`).
public enum BalanceAlgorithm: String, Sendable, Hashable, CaseIterable {
    /// Smooth weighted round-robin (as nginx does it): over any window, each target gets its weight's
    /// share, interleaved rather than in runs.
    case roundrobin
    /// The target with the fewest open bridges per unit of weight.
    case leastconn
    /// A target drawn at random, in proportion to its weight.
    case random
}

/// The decisions about a set of targets, without locks, clocks or I/O: which to try first, which are
/// up, and when a target changes state.
struct TargetBalancer {
    /// What is known of one target.
    struct Target {
        /// Its share under `--balance` (`,weight=N`).
        var weight: Int
        /// Whether clients are sent to it first.
        var isUp = true
        /// Open bridges to it.
        var active = 0
        /// Consecutive successful and failed checks or connects.
        var successes = 0
        var failures = 0
        /// Without health checks, when a down target is given another chance.
        var retryAt: NIODeadline?
        /// Smooth round-robin state.
        var currentWeight = 0
    }

    /// A target went up or down.
    enum Change: Equatable {
        case up(Int)
        case down(Int)
    }

    private(set) var targets: [Target]
    let algorithm: BalanceAlgorithm
    /// Consecutive successful health checks that bring a down target back.
    let rise: Int
    /// Consecutive failed health checks that take an up target down.
    let fall: Int
    /// Without health checks, how long a target that failed a connect stays down.
    let retryAfter: TimeAmount?
    private var random: RandomSource
    /// Where `leastconn` starts looking, so ties rotate.
    private var leastconnCursor = 0

    /// - Parameters:
    ///   - weights: one weight (1 or more) per target.
    ///   - algorithm: `--balance`.
    ///   - rise: health checks in a row that bring a target up.
    ///   - fall: health checks in a row that take a target down.
    ///   - retryAfter: without health checks, how long a failed target waits before it is tried again;
    ///     `nil` when health checks decide.
    ///   - random: the random source for `random`.
    init(
        weights: [Int],
        algorithm: BalanceAlgorithm,
        rise: Int = 2,
        fall: Int = 3,
        retryAfter: TimeAmount?,
        random: RandomSource = RandomSource()
    ) {
        self.targets = weights.map { Target(weight: max(1, $0)) }
        self.algorithm = algorithm
        self.rise = rise
        self.fall = fall
        self.retryAfter = retryAfter
        self.random = random
    }

    /// The order in which to try targets for one client: the balancer's pick among the up targets, then
    /// the other up targets, then the down ones as a last resort (they may have recovered).
    mutating func order(now: NIODeadline) -> (order: [Int], changes: [Change]) {
        var changes: [Change] = []
        for index in self.targets.indices where !self.targets[index].isUp {
            if let retryAt = self.targets[index].retryAt, now >= retryAt {
                self.targets[index].isUp = true
                self.targets[index].retryAt = nil
                changes.append(.up(index))
            }
        }
        let up = self.targets.indices.filter { self.targets[$0].isUp }
        let down = self.targets.indices.filter { !self.targets[$0].isUp }
        guard let first = self.pick(among: up) else { return (down, changes) }
        let rest = up.filter { $0 != first }
        let rotated = rest.drop { $0 < first } + rest.prefix { $0 < first }
        return ([first] + rotated + down, changes)
    }

    private mutating func pick(among candidates: [Int]) -> Int? {
        guard !candidates.isEmpty else { return nil }
        switch self.algorithm {
        case .roundrobin:
            let total = candidates.reduce(0) { $0 + self.targets[$1].weight }
            var best = candidates[0]
            for index in candidates {
                self.targets[index].currentWeight += self.targets[index].weight
                if self.targets[index].currentWeight > self.targets[best].currentWeight { best = index }
            }
            self.targets[best].currentWeight -= total
            return best
        case .leastconn:
            // The fewest open bridges per unit of weight (compared without division); ties rotate, so
            // short connections that never overlap still spread over every target.
            let start = candidates.firstIndex { $0 >= self.leastconnCursor } ?? 0
            let rotated = candidates[start...] + candidates[..<start]
            var best = rotated.first!
            for index in rotated.dropFirst()
            where self.targets[index].active * self.targets[best].weight
                < self.targets[best].active * self.targets[index].weight
            {
                best = index
            }
            self.leastconnCursor = best + 1
            return best
        case .random:
            let total = candidates.reduce(0) { $0 + self.targets[$1].weight }
            var draw = Int.random(in: 0..<total, using: &self.random)
            for index in candidates {
                draw -= self.targets[index].weight
                if draw < 0 { return index }
            }
            return candidates.last
        }
    }

    /// A client's connect to `index` succeeded: one more open bridge there.
    mutating func connected(_ index: Int) -> Change? {
        self.targets[index].active += 1
        self.targets[index].failures = 0
        guard !self.targets[index].isUp else { return nil }
        self.targets[index].isUp = true
        self.targets[index].retryAt = nil
        return .up(index)
    }

    /// A bridge to `index` ended.
    mutating func released(_ index: Int) {
        self.targets[index].active = max(0, self.targets[index].active - 1)
    }

    /// A client's connect to `index` failed: the target is marked down at once (passive check).
    mutating func connectFailed(_ index: Int, now: NIODeadline) -> Change? {
        self.targets[index].successes = 0
        self.targets[index].failures += 1
        self.targets[index].retryAt = self.retryAfter.map { now + $0 }
        guard self.targets[index].isUp else { return nil }
        self.targets[index].isUp = false
        return .down(index)
    }

    /// A health check of `index` finished.
    mutating func checked(_ index: Int, healthy: Bool) -> Change? {
        if healthy {
            self.targets[index].failures = 0
            self.targets[index].successes += 1
            if !self.targets[index].isUp && self.targets[index].successes >= self.rise {
                self.targets[index].isUp = true
                return .up(index)
            }
        } else {
            self.targets[index].successes = 0
            self.targets[index].failures += 1
            if self.targets[index].isUp && self.targets[index].failures >= self.fall {
                self.targets[index].isUp = false
                return .down(index)
            }
        }
        return nil
    }
}
