import Atomics
import NIOCore

/// A listener's drain, as its spliced bridges see it. A spliced bridge has no NIO channel left to receive
/// `ChannelShouldQuiesceEvent`, so the listener sets the drain deadline here and the splice engine ends
/// the listener's spliced bridges there (reason `drainTimeout`), as each NIO bridge does itself.
final class DrainSignal: Sendable {
    /// `NIODeadline.uptimeNanoseconds` of the deadline; `UInt64.max` while not draining (or draining
    /// without a timeout).
    private let deadlineNanoseconds = ManagedAtomic<UInt64>(.max)

    init() {}

    /// When the listener's spliced bridges must end, once it drains with a timeout.
    var deadline: NIODeadline? {
        let value = self.deadlineNanoseconds.load(ordering: .relaxed)
        return value == .max ? nil : .uptimeNanoseconds(value)
    }

    /// The listener stopped accepting: its spliced bridges may go on for `timeout` (forever if `nil`).
    func beginDrain(timeout: TimeAmount?) {
        guard let timeout else { return }
        let deadline = NIODeadline.now() + timeout
        self.deadlineNanoseconds.store(deadline.uptimeNanoseconds, ordering: .relaxed)
        DirectEngine.notifyDrainChanged()
    }
}
