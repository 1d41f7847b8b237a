import Dispatch
import Testing

/// A task executor that runs every job on a serial dispatch queue of its own.
///
/// Swift's cooperative pool has one thread per core, two on the machines these tests run on. A test that
/// blocks in `poll(2)`, spawns a process or runs a CPU-heavy parser holds one of them, and every other
/// test's `Task.sleep` waits for a free one: timing tests saw their pauses stretched by seconds. A task
/// that prefers this executor (SE-0417; its child tasks inherit the preference) runs on dispatch's
/// overcommitting threads instead, so a blocked or busy neighbour costs it CPU share, not turns. A queue per
/// job, not one per test: a test's child tasks may block side by side.
final class QueueExecutor: TaskExecutor, @unchecked Sendable {
    private let label: String

    init(label: String) {
        self.label = label
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        DispatchQueue(label: self.label).async { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}

/// Bounds how many test cases run at once: off the cooperative pool nothing else does, and two cores
/// running every case of the suite side by side (each with its own debug-built proxy) slow each other
/// past their timing bounds.
actor TestCaseSlots {
    static let shared = TestCaseSlots(limit: 4)

    private let limit: Int
    private var running = 0
    private var waiting: [CheckedContinuation<Void, Never>] = []

    init(limit: Int) {
        self.limit = limit
    }

    func acquire() async {
        if self.running < self.limit {
            self.running += 1
            return
        }
        await withCheckedContinuation { self.waiting.append($0) }
    }

    func release() {
        if self.waiting.isEmpty {
            self.running -= 1
        } else {
            self.waiting.removeFirst().resume()
        }
    }
}

/// Runs each test case of the suite (or test) it is attached to on a `QueueExecutor`, holding one of
/// `TestCaseSlots.shared`.
struct OwnThreadTrait: SuiteTrait, TestTrait, TestScoping {
    var isRecursive: Bool { true }

    func scopeProvider(for test: Test, testCase: Test.Case?) -> Self? {
        testCase == nil ? nil : self
    }

    func provideScope(
        for test: Test,
        testCase: Test.Case?,
        performing function: @Sendable () async throws -> Void
    ) async throws {
        await TestCaseSlots.shared.acquire()
        do {
            try await withTaskExecutorPreference(QueueExecutor(label: "test: \(test.name)")) {
                try await function()
            }
        } catch {
            await TestCaseSlots.shared.release()
            throw error
        }
        await TestCaseSlots.shared.release()
    }
}

extension Trait where Self == OwnThreadTrait {
    /// Each test case runs off the shared cooperative pool, at most four at a time.
    static var ownThread: Self { Self() }
}
