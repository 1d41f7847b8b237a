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

/// Runs listeners until a signal: the first SIGINT/SIGTERM drains, a second one exits at once.
enum ProxyRunner {
    /// - Parameters:
    ///   - configurations: the listeners to run.
    ///   - options: the common options (threads, logging, metrics).
    ///   - threads: event-loop threads for the shared group, instead of `--threads` (a service with loops of
    ///     its own needs fewer).
    ///   - extraServices: more services to run beside the listeners (mux, demux), given the event loops, the
    ///     logger and the metrics factory (`--metrics`); they drain with the rest on the first signal.
    static func run(
        _ configurations: [ProxyConfiguration],
        options: CommonOptions,
        threads: Int? = nil,
        extraServices: (_ group: EventLoopGroup, _ logger: Logger, _ metrics: (any MetricsFactory)?) -> [any Service] = { _, _, _ in [] }
    ) async throws {
        for configuration in configurations where configuration.bridge.engine == .direct {
            if let obstacle = configuration.directEngineObstacle(capturing: options.observability.capture != nil) {
                throw ValidationError("--engine direct cannot serve this listener: \(obstacle)")
            }
        }
        let format = options.logFormat
        let level = options.logLevel
        LoggingSystem.bootstrap { label in ProxyLogHandler(label: label, format: format, level: level) }
        let logger = Logger(label: "tcpproxy")
        ProcessLimits.raiseOpenFileLimit()

        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads ?? options.threads ?? System.coreCount)

        var capture: CaptureWriter?
        if let path = options.observability.capture {
            do {
                capture = try CaptureWriter(path: path)
            } catch {
                printError("\(error)")
                throw ExitCode(1)
            }
            logger.info("capturing to \(path)")
        }
        defer { capture?.close() }

        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        var metricsFactory: PrometheusMetricsFactory?
        if let endpoint = options.observability.metrics {
            let registry = PrometheusCollectorRegistry()
            metricsFactory = PrometheusMetricsFactory(registry: registry)
            services.append(.init(service: MetricsEndpoint(endpoint: endpoint, registry: registry, group: group, logger: logger)))
        }
        let listeners = configurations.map { configuration in
            Listener(
                configuration: configuration,
                group: group,
                logger: logger,
                capture: capture,
                metrics: metricsFactory.map {
                    ProxyMetrics(listener: configuration.name, target: configuration.mode.targetLabel, factory: $0)
                },
                metricsFactory: metricsFactory
            )
        }
        services += listeners.map { .init(service: $0) }
        services += extraServices(group, logger, metricsFactory).map { .init(service: $0) }
        let dropReporter = Self.reportCaptureDrops(capture, to: listeners.first?.metrics, group: group, logger: logger)
        defer { dropReporter?.cancel() }
        let serviceGroup = ServiceGroup(
            configuration: .init(
                services: services,
                gracefulShutdownSignals: [],
                cancellationSignals: [],
                logger: Logger(label: "tcpproxy.lifecycle", factory: { _ in SwiftLogNoOpLogHandler() })
            )
        )

        // Trapped before any listener starts: a signal sent as soon as `listening on` is logged must
        // drain, not kill the process with the default action.
        let trapped = await UnixSignalsSequence(trapping: .sigint, .sigterm)
        let signals = Task {
            var received = 0
            for await signal in trapped {
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
        } catch let error as ListenerError {
            printError(error.description)
            throw ExitCode(1)
        } catch {
            printError("\(error)")
            throw ExitCode(1)
        }
        try? await group.shutdownGracefully()
    }

    /// Adds capture records dropped since the last second to the metrics, and says so in the log once.
    private static func reportCaptureDrops(
        _ capture: CaptureWriter?,
        to metrics: ProxyMetrics?,
        group: EventLoopGroup,
        logger: Logger
    ) -> RepeatedTask? {
        guard let capture else { return nil }
        let reported = NIOLockedValueBox(0)
        return group.next().scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in
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

    static func printError(_ message: String) {
        var line = "tcpproxy: \(message)\n"
        line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    }
}
