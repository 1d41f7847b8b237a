import ArgumentParser
import Logging
import Metrics
import NIOCore
import ServiceLifecycle
import TCPProxyCore

/// What one mode's command line asks to run, not started yet: listeners on the process's shared event
/// loops, and services that run loops of their own (mux, demux).
///
/// A mode subcommand runs its plan with ``ProxyRunner``; `run CONFIG.yaml` makes one per listener entry of
/// the file and runs them side by side (``ConfigRunner``).
struct ModePlan: Sendable {
    typealias ServiceFactory = @Sendable (_ group: EventLoopGroup, _ logger: Logger, _ metrics: (any MetricsFactory)?) -> [any Service]

    /// Listeners on the shared event loops.
    var listeners: [ProxyConfiguration] = []
    /// Event-loop threads the shared group needs instead of `--threads` (a mode with loops of its own only
    /// needs one, for `--metrics`).
    var sharedThreads: Int? = nil
    /// More services to run beside the listeners, given the shared loops, the logger and the metrics factory.
    var services: ServiceFactory = { _, _, _ in [] }
    /// What the plan read besides its command line (a `--users` file), hashed: a `run` reload restarts an
    /// entry whose file changed even when its options did not. Compared within one process only.
    var fingerprint = 0
}

/// A mode subcommand whose command line `run CONFIG.yaml` can also take from a file entry.
protocol ModeCommand: AsyncParsableCommand {
    var options: CommonOptions { get }
    /// `--listen`.
    var listen: Endpoint { get }
    /// Where its listener connects to, fixed by its options (forward's targets, mux's tunnel, demux's
    /// target): the edges `run` follows to find listeners that send clients round in a loop.
    var destinations: [Endpoint] { get }

    /// The mode's plan, its listener named `name` in logs and metrics.
    /// - Throws: ``ModePlanError`` when something the options point at cannot be used (a users file).
    func plan(name: String) throws -> ModePlan
}

extension ModeCommand {
    /// None: SOCKS and transparent mode take their destinations from each client.
    var destinations: [Endpoint] { [] }

    /// Runs the plan until a signal; a plan that cannot be made exits 1 with its one-line reason.
    func runPlan(name: String) async throws {
        let plan: ModePlan
        do {
            plan = try self.plan(name: name)
        } catch let error as ModePlanError {
            ProxyRunner.printError(error.message)
            throw ExitCode(1)
        }
        try await ProxyRunner.run(plan, options: self.options)
    }
}

/// Why a mode's plan could not be made, in one line.
struct ModePlanError: Error {
    var message: String
}
