import ArgumentParser
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Prometheus
import ServiceLifecycle
import TCPProxyCore
import UnixSignals

#if canImport(Glibc)
import Glibc
#endif

/// Runs a mode's plan until a signal: the first SIGINT/SIGTERM drains, a second one exits at once.
enum ProxyRunner {
    /// - Parameters:
    ///   - plan: the listeners and services to run.
    ///   - options: the common options (threads, logging, metrics).
    static func run(_ plan: ModePlan, options: CommonOptions) async throws {
        try Self.checkEngines(plan, options: options)
        let process = try ProcessContext(options: options, threads: plan.sharedThreads)
        defer { process.close() }
        // The metrics socket first: an address in use ends the process before any listener says it is ready.
        do {
            try await process.endpoint?.bind()
        } catch {
            printError("\(error)")
            throw ExitCode(1)
        }
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = process.endpoint.map { [.init(service: $0)] } ?? []
        let planned = process.services(for: plan)
        services += planned.map { .init(service: $0) }
        let dropReporter = process.reportCaptureDrops(to: planned.lazy.compactMap { ($0 as? Listener)?.metrics }.first)
        let serviceGroup = ServiceGroup(
            configuration: .init(
                services: services,
                gracefulShutdownSignals: [],
                cancellationSignals: [],
                logger: ProcessContext.quietLogger
            )
        )
        let logger = process.logger

        // Trapped before any listener starts: a signal sent as soon as `listening on` is logged must
        // drain, not kill the process with the default action.
        // SIGHUP too: its default action would end the process without a drain. Only `run FILE` reloads.
        let trapped = await UnixSignalsSequence(trapping: .sigint, .sigterm, .sighup)
        let signals = Task {
            var received = 0
            for await signal in trapped {
                if signal == .sighup {
                    logger.notice("SIGHUP ignored: there is no file to reload (tcpproxy run FILE reloads on SIGHUP)")
                    continue
                }
                received += 1
                if received == 1 {
                    logger.notice("shutting down", metadata: ["signal": "\(signal)"])
                    await serviceGroup.triggerGracefulShutdown()
                } else {
                    logger.notice("exiting at once", metadata: ["signal": "\(signal)"])
                    exit(0)
                }
            }
        }
        defer { signals.cancel() }

        do {
            try await serviceGroup.run()
        } catch {
            dropReporter?.cancel()
            printError("\(error)")
            throw ExitCode(1)
        }
        await process.shutDown(cancelling: dropReporter)
    }

    /// `--engine direct` on a listener the direct engine cannot serve is an error, not a silent fallback.
    static func checkEngines(_ plan: ModePlan, options: CommonOptions) throws {
        for configuration in plan.listeners where configuration.bridge.engine == .direct {
            if let obstacle = configuration.directEngineObstacle(capturing: options.observability.capture != nil) {
                throw ValidationError("--engine direct cannot serve this listener: \(obstacle)")
            }
        }
    }

    /// One `tcpproxy: MESSAGE` line on standard error, after the log lines before it and, like them,
    /// never blocking on a reader that stopped reading (written out at exit at the latest).
    static func printError(_ message: String) {
        LogOutput.standardError.append("tcpproxy: \(message)\n")
    }
}

/// What every listener of the process shares: logging, the event loops, the `--capture` file and the
/// `--metrics` registry and endpoint. Made once, at start.
struct ProcessContext {
    let logger: Logger
    let group: MultiThreadedEventLoopGroup
    let capture: CaptureWriter?
    let metricsFactory: PrometheusMetricsFactory?
    /// The `--metrics` endpoint, to run beside the listeners.
    let endpoint: MetricsEndpoint?

    /// The lifecycle library's own log lines are not ours to print.
    static let quietLogger = Logger(label: "tcpproxy.lifecycle", factory: { _ in SwiftLogNoOpLogHandler() })

    /// - Parameters:
    ///   - options: threads, log level and format, `--capture`, `--metrics`.
    ///   - threads: event-loop threads instead of `--threads`.
    /// - Throws: `ExitCode(1)` when the capture file cannot be opened (said on standard error).
    init(options: CommonOptions, threads: Int? = nil) throws {
        let format = options.logFormat
        let level = options.logLevel
        LoggingSystem.bootstrap { label in ProxyLogHandler(label: label, format: format, level: level) }
        let logger = Logger(label: "tcpproxy")
        self.logger = logger
        ProcessLimits.raiseOpenFileLimit()
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: threads ?? options.threads ?? System.coreCount)

        if let path = options.observability.capture {
            do {
                self.capture = try CaptureWriter(path: path)
            } catch {
                ProxyRunner.printError("\(error)")
                throw ExitCode(1)
            }
            logger.info("capturing to \(path)")
        } else {
            self.capture = nil
        }
        if let endpoint = options.observability.metrics {
            let registry = PrometheusCollectorRegistry()
            self.metricsFactory = PrometheusMetricsFactory(registry: registry)
            self.endpoint = MetricsEndpoint(endpoint: endpoint, registry: registry, group: self.group, logger: logger)
        } else {
            self.metricsFactory = nil
            self.endpoint = nil
        }
    }

    /// The plan's listeners and services, made on this process's loops, logger, capture and metrics.
    func services(for plan: ModePlan) -> [any Service] {
        let listeners: [any Service] = plan.listeners.map { configuration in
            Listener(
                configuration: configuration,
                group: self.group,
                logger: self.logger,
                capture: self.capture,
                metrics: self.metricsFactory.map {
                    ProxyMetrics(listener: configuration.name, target: configuration.mode.targetLabel, factory: $0)
                },
                metricsFactory: self.metricsFactory
            )
        }
        return listeners + plan.services(self.group, self.logger, self.metricsFactory)
    }

    /// Closes the capture file (again: idempotent), waiting at most ``CaptureWriter/closeTimeout``.
    func close() {
        if let capture = self.capture, !capture.close() {
            self.logger.warning("capture file left incomplete: it took nothing for 10 s (a pipe whose reader stopped?)")
        }
    }

    /// Stops the capture drop reporter, closes the capture file, then shuts the event loops down. In this
    /// order: a repeated task cancelled after its loop has shut down cannot reach it, and NIO prints an error.
    /// The file is closed on NIO's blocking-work pool, so that a second signal is still heard while it waits.
    func shutDown(cancelling dropReporter: RepeatedTask?) async {
        if let dropReporter {
            let cancelled = self.group.next().makePromise(of: Void.self)
            dropReporter.cancel(promise: cancelled)
            try? await cancelled.futureResult.get()
        }
        if self.capture != nil {
            try? await NIOThreadPool.singleton.runIfActive { [self] in self.close() }
        }
        try? await self.group.shutdownGracefully()
    }

    /// Adds capture records dropped since the last second to the metrics, and says so in the log once.
    func reportCaptureDrops(to metrics: ProxyMetrics?) -> RepeatedTask? {
        guard let capture = self.capture else { return nil }
        let logger = self.logger
        let reported = NIOLockedValueBox(0)
        return self.group.next().scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in
            let dropped = capture.droppedRecords
            let delta = reported.withLockedValue { previous in
                defer { previous = dropped }
                return dropped - previous
            }
            guard delta > 0 else { return }
            if dropped == delta {
                logger.warning("capture is dropping records: the disk cannot keep up", metadata: ["dropped": "\(delta)"])
            }
            metrics?.captureDropped(delta)
        }
    }
}
