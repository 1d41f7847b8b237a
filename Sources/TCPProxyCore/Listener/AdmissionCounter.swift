import Atomics
import NIOCore

/// The open bridges (or mux streams) of one listener, shared by its event loops: it admits a new client
/// and claims its slot in one step, so clients accepted at once on several loops cannot together
/// exceed `--max-connections`.
final class AdmissionCounter: Sendable {
    private let active = ManagedAtomic<Int>(0)

    /// Open bridges right now.
    var count: Int { self.active.load(ordering: .relaxed) }

    /// Decides on a new client and, when it is admitted, claims its slot (compare-and-exchange).
    /// - Parameters:
    ///   - policy: `--allow` and `--max-connections`.
    ///   - address: the client's address.
    ///   - checkAllow: whether to apply `--allow` now (not when the address comes later in a PROXY header).
    func admit(_ policy: AdmissionPolicy, address: SocketAddress?, checkAllow: Bool = true) -> AdmissionPolicy.Decision {
        while true {
            let active = self.active.load(ordering: .relaxed)
            let decision = policy.decide(address: address, activeBridges: active, checkAllow: checkAllow)
            guard decision == .admit else { return decision }
            if self.active.compareExchange(expected: active, desired: active + 1, ordering: .relaxed).exchanged {
                return .admit
            }
        }
    }

    /// Gives a slot back: its bridge ended, or never started.
    func release() {
        self.active.wrappingDecrement(ordering: .relaxed)
    }
}
