/// A small, fast random number generator (SplitMix64) for fault injection, seedable so tests can
/// predict which bit flips and how much jitter each chunk gets.
struct RandomSource: RandomNumberGenerator {
    private var state: UInt64

    /// - Parameter seed: the starting state; by default drawn from the system generator.
    init(seed: UInt64 = UInt64.random(in: .min ... .max)) {
        self.state = seed
    }

    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
