import ArgumentParser
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import TCPProxyCore
import UnixSignals

#if canImport(Glibc)
import Glibc
#endif

/// Runs listeners until a signal: the first SIGINT/SIGTERM drains, a second one exits at once.
enum ProxyRunner {
    static func run(_ configurations: [ProxyConfiguration], options: CommonOptions) async throws {
        let format = options.logFormat
        let level = options.logLevel
        LoggingSystem.bootstrap { label in ProxyLogHandler(label: label, format: format, level: level) }
        let logger = Logger(label: "tcpproxy")
        ProcessLimits.raiseOpenFileLimit()

        let threads = options.threads ?? System.coreCount
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let listeners = configurations.map { Listener(configuration: $0, group: group, logger: logger) }
        let serviceGroup = ServiceGroup(
            configuration: .init(
                services: listeners.map { .init(service: $0) },
                gracefulShutdownSignals: [],
                cancellationSignals: [],
                logger: Logger(label: "tcpproxy.lifecycle", factory: { _ in SwiftLogNoOpLogHandler() })
            )
        )

        let signals = Task {
            var received = 0
            for await signal in await UnixSignalsSequence(trapping: .sigint, .sigterm) {
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

    static func printError(_ message: String) {
        var line = "tcpproxy: \(message)\n"
        line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    }
}
