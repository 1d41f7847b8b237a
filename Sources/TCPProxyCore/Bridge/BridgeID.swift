import Atomics

/// The numbers in `bridge.id`: one sequence for the whole process, so that an id names one bridge in the
/// log even across listeners, and across a listener that `run` restarts on SIGHUP while its old bridges
/// drain (a sequence per listener started again at 1 beside them).
enum BridgeID {
    private static let counter = ManagedAtomic<UInt64>(1)

    /// The next id; the first bridge of the process gets 1.
    static func next() -> UInt64 {
        self.counter.loadThenWrappingIncrement(ordering: .relaxed)
    }
}
