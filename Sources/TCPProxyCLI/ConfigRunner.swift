import ArgumentParser
import Logging
import NIOConcurrencyHelpers
import ServiceLifecycle
import TCPProxyCore
import UnixSignals

#if canImport(Glibc)
import Glibc
#endif

/// Runs the listeners of a `run` file, each in a service group of its own so that it can be started and
/// drained alone: SIGHUP re-reads the file and changes only what changed (SPEC §1); the first SIGINT or
/// SIGTERM drains everything, a second one exits at once.
enum ConfigRunner {
    /// A file turned into what runs.
    struct Loaded {
        var settings: CommonOptions
        var file: RunFile
        var entries: [Planned]

        /// Says which listeners the process-wide `capture` leaves out: mux and demux streams have no
        /// per-chunk hooks (their command lines refuse `--capture`).
        func noteUncaptured(capturing: Bool, logger: Logger) {
            let names = self.entries.filter { ["mux", "demux"].contains($0.entry.mode) }.map(\.entry.name)
            guard capturing, !names.isEmpty else { return }
            logger.warning(
                "capture leaves out mux and demux listeners: their streams have no per-chunk hooks",
                metadata: ["listeners": "\(names.joined(separator: ","))"]
            )
        }
    }

    /// One entry of the file and the plan its command line makes.
    struct Planned: Sendable {
        var entry: RunFile.Entry
        var plan: ModePlan
    }

    /// Reads the file and parses every entry with its mode's own command-line parser.
    /// - Parameter running: on a reload, the process-wide options the process started with: they apply to
    ///   the entries (the file's own apply at start only).
    /// - Throws: what is wrong, in one line naming the file and the entry.
    static func load(_ path: String, running: CommonOptions? = nil) throws(ModePlanError) -> Loaded {
        let file: RunFile
        do {
            file = try RunFile(contentsOfFile: path, modeHas: ModeOptionNames.has)
        } catch {
            throw ModePlanError(message: error.message)
        }
        let settings: CommonOptions
        do {
            settings = try CommonOptions.parse(file.settings)
        } catch {
            throw ModePlanError(message: "\(path): \(CommonOptions.message(for: error))")
        }
        let process = running ?? settings
        var entries: [Planned] = []
        // Which entry listens where: two on overlapping addresses could not both start (port 0 excepted).
        var listening: [(address: Endpoint, owner: String)] = []
        if let metrics = process.observability.metrics { listening.append((metrics, "the `metrics` endpoint")) }
        // Each entry's listener and where it connects, for the loop check across entries below.
        var routes: [(name: String, listen: Endpoint, destinations: [Endpoint])] = []
        for entry in file.entries {
            func failure(_ message: String) -> ModePlanError {
                ModePlanError(message: "\(path): listener `\(entry.name)`: \(message)")
            }
            guard let mode = RunCommand.modes[entry.mode] else { throw failure("unknown mode `\(entry.mode)`") }
            do {
                // The process's threads, for modes that size loops of their own by them (mux).
                let threads = process.threads.map { ["--threads=\($0)"] } ?? []
                let command = try mode.parse(entry.arguments + threads)
                if let other = listening.first(where: { $0.address.clashes(with: command.listen) }) {
                    throw ModePlanError(message: "listens on \(command.listen), which clashes with \(other.owner) on \(other.address)")
                }
                listening.append((command.listen, "listener `\(entry.name)`"))
                let plan = try command.plan(name: entry.name)
                try ProxyRunner.checkEngines(plan, options: process)
                entries.append(Planned(entry: entry, plan: plan))
                routes.append((entry.name, command.listen, command.destinations))
            } catch let error as ModePlanError {
                throw failure(error.message)
            } catch {
                throw failure(mode.message(for: error))
            }
        }
        if let cycle = Self.loop(through: routes) {
            throw ModePlanError(
                message: "\(path): listeners \(cycle.map { "`\($0)`" }.joined(separator: " → ")) send clients round in a loop: "
                    + "every client would come back in until descriptors run out"
            )
        }
        return Loaded(settings: settings, file: file, entries: entries)
    }

    /// Listeners that connect to one another in a circle (`a` targets `b`'s address, `b` targets `a`'s), as
    /// their names from the first back to it; `nil` when there is none. A listener reaching itself is
    /// already refused by its own mode's check.
    static func loop(through routes: [(name: String, listen: Endpoint, destinations: [Endpoint])]) -> [String]? {
        let edges = routes.map { from in
            routes.indices.filter { to in from.destinations.contains { $0.loops(into: routes[to].listen) } }
        }
        // Depth-first search; a node on the current path seen again closes a circle.
        var state = [UInt8](repeating: 0, count: routes.count)  // 0 new, 1 on the path, 2 done
        var path: [Int] = []
        func visit(_ node: Int) -> [Int]? {
            state[node] = 1
            path.append(node)
            for next in edges[node] {
                if state[next] == 1, let start = path.firstIndex(of: next) { return Array(path[start...]) + [next] }
                if state[next] == 0, let found = visit(next) { return found }
            }
            path.removeLast()
            state[node] = 2
            return nil
        }
        for node in routes.indices where state[node] == 0 {
            if let circle = visit(node) { return circle.map { routes[$0].name } }
        }
        return nil
    }

    /// What the runner's loop hears of.
    fileprivate enum Event: Sendable {
        case signal(UnixSignal)
        /// A listener's service group returned; `error` when it failed (a bind that failed).
        case ended(generation: Int, error: String?)
        /// Everything drained after a shutdown signal.
        case stopped
    }

    static func run(_ loaded: Loaded, path: String) async throws {
        let process = try ProcessContext(options: loaded.settings)
        defer { process.close() }
        let logger = process.logger
        let (events, sink) = AsyncStream.makeStream(of: Event.self)

        // Trapped before any listener starts, as in single-mode runs.
        let trapped = await UnixSignalsSequence(trapping: .sigint, .sigterm, .sighup)
        // A listener of the file failed to start: the exit status is 1, however the process ends.
        let failedAtStart = NIOLockedValueBox(false)
        let signals = Task {
            for await signal in trapped {
                // Once every listener has stopped the event loop is gone; the last step (closing the capture
                // file) can still take a while, and a second SIGINT/SIGTERM must end it at once.
                if case .terminated = sink.yield(.signal(signal)), signal != .sighup {
                    logger.notice("exiting at once", metadata: ["signal": "\(signal)"])
                    exit(failedAtStart.withLockedValue { $0 } ? 1 : 0)
                }
            }
        }
        defer { signals.cancel() }

        var supervisor = Supervisor(process: process, sink: sink)
        if let endpoint = process.endpoint {
            // Named so that no entry can clash with it (entry names have no parentheses).
            supervisor.start(name: "(metrics)", entry: nil, services: { [endpoint] }, fromStart: true)
        }
        for planned in loaded.entries {
            supervisor.start(planned, fromStart: true)
        }
        loaded.noteUncaptured(capturing: process.capture != nil, logger: logger)
        let dropReporter = process.reportCaptureDrops(to: supervisor.firstListenerMetrics)

        var shuttingDown = false
        for await event in events {
            switch event {
            case .signal(let signal) where signal == .sighup:
                guard !shuttingDown else { continue }
                Self.reload(path, started: loaded, supervisor: &supervisor, logger: logger)
            case .signal(let signal):
                if shuttingDown {
                    logger.notice("exiting at once", metadata: ["signal": "\(signal)"])
                    exit(failedAtStart.withLockedValue { $0 } ? 1 : 0)
                }
                shuttingDown = true
                logger.notice("shutting down", metadata: ["signal": "\(signal)"])
                supervisor.stopAll()
            case .ended(let generation, let error):
                let wasCurrent = supervisor.isCurrent(generation)
                let ended = supervisor.ended(generation)
                // A listener that failed to bind, or that a reload stopped, made its pool's series all the
                // same (up, before binding): they go unless a running listener has them.
                supervisor.forgetTargetSeries(of: ended)
                guard let error else { continue }
                if ended?.fromStart ?? false, wasCurrent {
                    // As a single-mode run: a listener of the file that cannot start stops the process.
                    ProxyRunner.printError(error)
                    failedAtStart.withLockedValue { $0 = true }
                    if !shuttingDown {
                        shuttingDown = true
                        supervisor.stopAll()
                    }
                } else {
                    logger.error("listener failed to start: \(error)", metadata: ["listener": "\(ended?.name ?? "?")"])
                }
            case .stopped:
                sink.finish()
            }
        }
        await process.shutDown(cancelling: dropReporter)
        if failedAtStart.withLockedValue({ $0 }) { throw ExitCode(1) }
    }

    /// SIGHUP: reads the file again and applies what changed; a file that does not parse changes nothing.
    /// - Parameter started: what the process started with (its process-wide options hold).
    private static func reload(_ path: String, started: Loaded, supervisor: inout Supervisor, logger: Logger) {
        let loaded: Loaded
        do {
            loaded = try Self.load(path, running: started.settings)
        } catch {
            logger.error("reload failed, the running listeners stay as they were: \(error.message)")
            return
        }
        if loaded.file.settings != started.file.settings {
            logger.warning(
                "reload: \(RunFile.processKeys.joined(separator: ", ")) apply at start only; restart to change them"
            )
        }
        // Against what runs, not against the last file: an entry that failed to start is started again, and
        // one whose users file changed is replaced though its options did not change.
        let running = supervisor.runningEntries
        let was = Dictionary(uniqueKeysWithValues: running.map { ($0.entry.name, $0.fingerprint) })
        let now = Dictionary(uniqueKeysWithValues: loaded.entries.map { ($0.entry.name, $0.plan.fingerprint) })
        let changes = RunFileChanges(from: running.map(\.entry), to: loaded.file.entries) { old, new in
            RunFileChanges.sameListener(old, new) && was[old.name] == now[new.name]
        }
        loaded.noteUncaptured(capturing: supervisor.process.capture != nil, logger: logger)
        let before = supervisor.targetSeries
        for name in changes.stopped + changes.replaced {
            supervisor.stop(name: name)
        }
        for planned in loaded.entries where changes.started.contains(planned.entry.name) || changes.replaced.contains(planned.entry.name) {
            // A replaced listener on the same address lets go of it as its drain begins: retried meanwhile.
            supervisor.start(planned, fromStart: false)
        }
        supervisor.forgetTargetSeries(before)
        logger.logReady(
            "reloaded \(path)",
            at: .notice,
            metadata: [
                "listeners.kept": "\(changes.kept.count)",
                "listeners.started": "\(changes.started.count)",
                "listeners.restarted": "\(changes.replaced.count)",
                "listeners.stopped": "\(changes.stopped.count)",
            ]
        )
    }
}

/// One listener's `tcpproxy_target_*` series, by their labels.
private struct TargetSeries: Hashable, Sendable {
    var listener: String
    var target: String
}

/// The listeners running now, and those still draining after a reload stopped them.
private struct Supervisor {
    /// One started listener.
    struct Running: Sendable {
        var name: String
        /// The file's entry and its plan's fingerprint; `nil` for the metrics endpoint.
        var entry: (entry: RunFile.Entry, fingerprint: Int)?
        /// Its listeners' per-target series.
        var targetSeries: Set<TargetSeries> = []
        var fromStart: Bool
        var handle: Handle
        var task: Task<Void, Never>
    }

    /// The service group a listener runs in now (a new one per attempt to bind), and whether it was stopped.
    final class Handle: Sendable {
        private let state = NIOLockedValueBox<(group: ServiceGroup?, stopped: Bool)>((nil, false))

        /// Makes `group` the one to stop; `false` when the listener was stopped already.
        func attach(_ group: ServiceGroup) -> Bool {
            self.state.withLockedValue { state in
                guard !state.stopped else { return false }
                state.group = group
                return true
            }
        }

        var isStopped: Bool { self.state.withLockedValue { $0.stopped } }

        func stop() async {
            let group = self.state.withLockedValue { state in
                state.stopped = true
                return state.group
            }
            await group?.triggerGracefulShutdown()
        }
    }

    let process: ProcessContext
    private let sink: AsyncStream<ConfigRunner.Event>.Continuation
    /// By generation: every listener started and not ended yet.
    private var running: [Int: Running] = [:]
    /// The generation each name runs as now.
    private var current: [String: Int] = [:]
    private var nextGeneration = 0
    /// The metrics of the first listener the file started (capture drops are counted there).
    private(set) var firstListenerMetrics: ProxyMetrics?

    fileprivate init(process: ProcessContext, sink: AsyncStream<ConfigRunner.Event>.Continuation) {
        self.process = process
        self.sink = sink
    }

    mutating func start(_ planned: ConfigRunner.Planned, fromStart: Bool) {
        let process = self.process
        let plan = planned.plan
        self.start(
            name: planned.entry.name,
            entry: (planned.entry, plan.fingerprint),
            services: { process.services(for: plan) },
            fromStart: fromStart
        )
        let series = plan.listeners.flatMap { listener in
            listener.mode.targetSeries.map { TargetSeries(listener: listener.name, target: $0) }
        }
        self.running[self.current[planned.entry.name]!]?.targetSeries = Set(series)
        if fromStart, self.firstListenerMetrics == nil, let first = plan.listeners.first, let factory = process.metricsFactory {
            // The registry hands back the series the listener made with the same name and labels.
            self.firstListenerMetrics = ProxyMetrics(listener: first.name, target: first.mode.targetLabel, factory: factory)
        }
    }

    mutating func start(
        name: String,
        entry: (entry: RunFile.Entry, fingerprint: Int)?,
        services: @escaping @Sendable () -> [any Service],
        fromStart: Bool
    ) {
        let generation = self.nextGeneration
        self.nextGeneration += 1
        let handle = Handle()
        let sink = self.sink
        let task = Task {
            let failure = await Self.serve(services, handle: handle, retryingBusyAddress: !fromStart)
            sink.yield(.ended(generation: generation, error: failure))
        }
        self.running[generation] = Running(name: name, entry: entry, fromStart: fromStart, handle: handle, task: task)
        self.current[name] = generation
    }

    /// Runs a listener's services until they end, in a new service group per attempt to bind.
    /// - Parameter retryingBusyAddress: whether an address in use is tried again (every 10 ms for 5 s): the
    ///   listener a reload replaces closes its socket as its drain begins.
    /// - Returns: why it failed, if it did; `nil` when it ended, or was stopped before it could bind.
    private static func serve(
        _ services: @Sendable () -> [any Service],
        handle: Handle,
        retryingBusyAddress: Bool
    ) async -> String? {
        var attempts = 0
        while !handle.isStopped {
            let group = ServiceGroup(
                configuration: .init(
                    services: services().map { .init(service: $0) },
                    gracefulShutdownSignals: [],
                    cancellationSignals: [],
                    logger: ProcessContext.quietLogger
                )
            )
            guard handle.attach(group) else {
                // Stopped while its services were being made: they run already told to stop, so that they
                // release what they made (a mux's event loops), and end at once.
                await group.triggerGracefulShutdown()
                try? await group.run()
                return nil
            }
            do {
                try await group.run()
                return nil
            } catch let error as ListenerError where error.isAddressInUse && retryingBusyAddress && attempts < 500 {
                attempts += 1
                try? await Task.sleep(for: .milliseconds(10))
            } catch {
                return handle.isStopped ? nil : "\(error)"
            }
        }
        return nil
    }

    /// Drains the listener running as `name` (its bridges finish within the drain timeout).
    mutating func stop(name: String) {
        guard let generation = self.current.removeValue(forKey: name), let running = self.running[generation] else { return }
        let handle = running.handle
        Task { await handle.stop() }
    }

    /// Drains everything, then says `stopped`.
    func stopAll() {
        let all = Array(self.running.values)
        let sink = self.sink
        Task {
            for running in all { await running.handle.stop() }
            for running in all { await running.task.value }
            sink.yield(.stopped)
        }
    }

    /// The per-target series of the listeners running now (not of those draining after a reload stopped them).
    var targetSeries: Set<TargetSeries> {
        self.current.values.reduce(into: []) { $0.formUnion(self.running[$1]?.targetSeries ?? []) }
    }

    /// Removes the `tcpproxy_target_up` series among `series` that no running listener has (docs/CONFIG.md).
    func forgetTargetSeries(_ series: Set<TargetSeries>) {
        guard let factory = self.process.metricsFactory else { return }
        for gone in series.subtracting(self.targetSeries) {
            TargetMetrics.forgetUp(listener: gone.listener, target: gone.target, factory: factory)
        }
    }

    /// ``forgetTargetSeries(_:)`` for a listener that ended.
    func forgetTargetSeries(of ended: Running?) {
        if let ended { self.forgetTargetSeries(ended.targetSeries) }
    }

    /// The file's entries running now (not those draining after a reload stopped them).
    var runningEntries: [(entry: RunFile.Entry, fingerprint: Int)] {
        self.current.values.compactMap { self.running[$0]?.entry }
    }

    func isCurrent(_ generation: Int) -> Bool {
        self.running[generation].map { self.current[$0.name] == generation } ?? false
    }

    /// A listener's group returned: forgets it.
    mutating func ended(_ generation: Int) -> Running? {
        guard let running = self.running.removeValue(forKey: generation) else { return nil }
        if self.current[running.name] == generation { self.current[running.name] = nil }
        return running
    }
}
