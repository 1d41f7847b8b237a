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
            file = try RunFile(contentsOfFile: path)
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
        for entry in file.entries {
            func failure(_ message: String) -> ModePlanError {
                ModePlanError(message: "\(path): listener `\(entry.name)`: \(message)")
            }
            guard let mode = RunCommand.modes[entry.mode] else { throw failure("unknown mode `\(entry.mode)`") }
            if process.observability.capture != nil, entry.mode == "mux" || entry.mode == "demux" {
                throw failure("--capture is not supported in mux and demux modes (streams have no per-chunk hooks)")
            }
            do {
                // The process's threads, for modes that size loops of their own by them (mux).
                let threads = process.threads.map { ["--threads=\($0)"] } ?? []
                let command = try mode.parse(entry.arguments + threads)
                let plan = try command.plan(name: entry.name)
                try ProxyRunner.checkEngines(plan, options: process)
                entries.append(Planned(entry: entry, plan: plan))
            } catch let error as ModePlanError {
                throw failure(error.message)
            } catch {
                throw failure(mode.message(for: error))
            }
        }
        return Loaded(settings: settings, file: file, entries: entries)
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
        let signals = Task {
            for await signal in trapped { sink.yield(.signal(signal)) }
        }
        defer { signals.cancel() }

        var supervisor = Supervisor(process: process, sink: sink)
        if let endpoint = process.endpoint {
            // Named so that no entry can clash with it (entry names have no parentheses).
            supervisor.start(name: "(metrics)", services: { [endpoint] }, fromStart: true)
        }
        for planned in loaded.entries {
            supervisor.start(planned, fromStart: true)
        }
        let dropReporter = process.reportCaptureDrops(to: supervisor.firstListenerMetrics)
        defer { dropReporter?.cancel() }

        var current = loaded.file
        var shuttingDown = false
        var failed = false
        for await event in events {
            switch event {
            case .signal(let signal) where signal == .sighup:
                guard !shuttingDown else { continue }
                Self.reload(path, current: &current, running: loaded.settings, supervisor: &supervisor, logger: logger)
            case .signal(let signal):
                if shuttingDown {
                    logger.notice("exiting at once", metadata: ["signal": "\(signal)"])
                    exit(failed ? 1 : 0)
                }
                shuttingDown = true
                logger.notice("shutting down", metadata: ["signal": "\(signal)"])
                supervisor.stopAll()
            case .ended(let generation, let error):
                let wasCurrent = supervisor.isCurrent(generation)
                let ended = supervisor.ended(generation)
                guard let error else { continue }
                if ended?.fromStart ?? false, wasCurrent {
                    // As a single-mode run: a listener of the file that cannot start stops the process.
                    ProxyRunner.printError(error)
                    failed = true
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
        try? await process.group.shutdownGracefully()
        if failed { throw ExitCode(1) }
    }

    /// SIGHUP: reads the file again and applies what changed; a file that does not parse changes nothing.
    private static func reload(
        _ path: String,
        current: inout RunFile,
        running: CommonOptions,
        supervisor: inout Supervisor,
        logger: Logger
    ) {
        let loaded: Loaded
        do {
            loaded = try Self.load(path, running: running)
        } catch {
            logger.error("reload failed, the running listeners stay as they were: \(error.message)")
            return
        }
        if loaded.file.settings != current.settings {
            logger.warning(
                "reload: \(RunFile.processKeys.joined(separator: ", ")) apply at start only; restart to change them"
            )
        }
        var changes = RunFileChanges(from: current.entries, to: loaded.file.entries)
        // "Kept" by the file's text, but not running (it failed to start), or what it reads changed (a users
        // file): started again.
        for planned in loaded.entries where changes.kept.contains(planned.entry.name) {
            let name = planned.entry.name
            if !supervisor.isRunning(name) {
                changes.kept.removeAll { $0 == name }
                changes.started.append(name)
            } else if supervisor.fingerprint(name) != planned.plan.fingerprint {
                changes.kept.removeAll { $0 == name }
                changes.replaced.append(name)
            }
        }
        for name in changes.stopped + changes.replaced {
            supervisor.stop(name: name)
        }
        for planned in loaded.entries where changes.started.contains(planned.entry.name) || changes.replaced.contains(planned.entry.name) {
            // A replaced listener on the same address lets go of it as its drain begins: retried meanwhile.
            supervisor.start(planned, fromStart: false)
        }
        current.entries = loaded.file.entries
        logger.notice(
            "reloaded \(path)",
            metadata: [
                "listeners.kept": "\(changes.kept.count)",
                "listeners.started": "\(changes.started.count)",
                "listeners.restarted": "\(changes.replaced.count)",
                "listeners.stopped": "\(changes.stopped.count)",
            ]
        )
    }
}

/// The listeners running now, and those still draining after a reload stopped them.
private struct Supervisor {
    /// One started listener.
    struct Running: Sendable {
        var name: String
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
    /// What each name's plan read besides its command line, when it started (``ModePlan/fingerprint``).
    private var fingerprints: [String: Int] = [:]
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
        self.start(name: planned.entry.name, services: { process.services(for: plan) }, fromStart: fromStart)
        self.fingerprints[planned.entry.name] = plan.fingerprint
        if fromStart, self.firstListenerMetrics == nil, let first = plan.listeners.first, let factory = process.metricsFactory {
            // The registry hands back the series the listener made with the same name and labels.
            self.firstListenerMetrics = ProxyMetrics(listener: first.name, target: first.mode.targetLabel, factory: factory)
        }
    }

    mutating func start(name: String, services: @escaping @Sendable () -> [any Service], fromStart: Bool) {
        let generation = self.nextGeneration
        self.nextGeneration += 1
        let handle = Handle()
        let sink = self.sink
        let task = Task {
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
                    // Stopped while its services were being made: they run already told to stop, so that
                    // they release what they made (a mux's event loops), and end at once.
                    await group.triggerGracefulShutdown()
                    try? await group.run()
                    break
                }
                do {
                    try await group.run()
                    sink.yield(.ended(generation: generation, error: nil))
                    return
                } catch let error as ListenerError where error.isAddressInUse && !fromStart && attempts < 500 {
                    // The listener this one replaces closes its socket as its drain begins: soon.
                    attempts += 1
                    try? await Task.sleep(for: .milliseconds(10))
                } catch _ where handle.isStopped {
                    // Stopped before it could bind (a reload replaced it): not a failure.
                    break
                } catch let error as ListenerError {
                    sink.yield(.ended(generation: generation, error: error.description))
                    return
                } catch {
                    sink.yield(.ended(generation: generation, error: "\(error)"))
                    return
                }
            }
            sink.yield(.ended(generation: generation, error: nil))
        }
        self.running[generation] = Running(name: name, fromStart: fromStart, handle: handle, task: task)
        self.current[name] = generation
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

    func isRunning(_ name: String) -> Bool { self.current[name] != nil }

    func isCurrent(_ generation: Int) -> Bool {
        self.running[generation].map { self.current[$0.name] == generation } ?? false
    }

    func fingerprint(_ name: String) -> Int { self.fingerprints[name] ?? 0 }

    /// A listener's group returned: forgets it.
    mutating func ended(_ generation: Int) -> Running? {
        guard let running = self.running.removeValue(forKey: generation) else { return nil }
        if self.current[running.name] == generation { self.current[running.name] = nil }
        return running
    }
}
