import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Prometheus
import Testing

@testable import TCPProxyCore

@Suite("Metrics endpoint", .serialized, .timeLimit(.minutes(1)))
struct MetricsEndpointTests {
    /// Log lines a test can read back.
    final class LogLines: Sendable {
        private let box = NIOLockedValueBox<[String]>([])
        var lines: [String] { self.box.withLockedValue { $0 } }
        func append(_ line: String) { self.box.withLockedValue { $0.append(line) } }
    }

    struct CapturingLogHandler: LogHandler {
        let sink: LogLines
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { self.metadata[key] }
            set { self.metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            self.sink.append("\(event.level) \(event.message)")
        }
    }

    /// Runs `curl ARGUMENTS` and returns its standard output.
    static func curl(_ arguments: [String]) async throws -> String {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
                process.arguments = ["--silent", "--max-time", "10"] + arguments
                let output = Pipe()
                process.standardOutput = output
                process.standardError = FileHandle.nullDevice
                do {
                    try process.run()
                } catch {
                    continuation.resume(throwing: error)
                    return
                }
                let data = output.fileHandleForReading.readDataToEndOfFile()
                process.waitUntilExit()
                continuation.resume(returning: String(decoding: data, as: UTF8.self))
            }
        }
    }

    /// A running endpoint on 127.0.0.1:0, with a registry holding one listener's metrics.
    struct Running {
        let group: MultiThreadedEventLoopGroup
        let endpoint: MetricsEndpoint
        let task: Task<Void, Error>
        let metrics: ProxyMetrics
        let log: LogLines
        let port: Int

        var base: String { "http://127.0.0.1:\(self.port)" }

        static func start(idleTimeout: TimeAmount = MetricsEndpoint.idleTimeout) async throws -> Running {
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let registry = PrometheusCollectorRegistry()
            let metrics = ProxyMetrics(
                listener: "main",
                target: "127.0.0.1:80",
                factory: ProxyMetrics.prometheusFactory(registry: registry)
            )
            let log = LogLines()
            let logger = Logger(label: "test") { _ in CapturingLogHandler(sink: log) }
            let endpoint = MetricsEndpoint(
                endpoint: Endpoint(host: "127.0.0.1", port: 0),
                registry: registry,
                group: group,
                logger: logger,
                idleTimeout: idleTimeout
            )
            let task = Task { try await endpoint.run() }
            let deadline = ContinuousClock.now + .seconds(10)
            while endpoint.localAddress == nil, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            guard let port = endpoint.localAddress?.port else {
                task.cancel()
                try? await group.shutdownGracefully()
                throw CancellationError()
            }
            return Running(group: group, endpoint: endpoint, task: task, metrics: metrics, log: log, port: port)
        }

        /// Cancels the service and returns how long it took to stop.
        func stop() async throws -> Duration {
            let start = ContinuousClock.now
            self.task.cancel()
            try await self.task.value
            let elapsed = ContinuousClock.now - start
            try await self.group.shutdownGracefully()
            return elapsed
        }
    }

    @Test("A connection that sends half a request, or nothing, is closed after the idle timeout; a scrape still works")
    func idleConnectionsClose() async throws {
        let running = try await Running.start(idleTimeout: .milliseconds(300))
        let half = try Self.rawConnect(port: running.port)
        defer { close(half) }
        _ = "GET /metr".withCString { send(half, $0, 9, 0) }
        let silent = try Self.rawConnect(port: running.port)
        defer { close(silent) }
        for socket in [half, silent] {
            var pollfd = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
            #expect(poll(&pollfd, 1, 5000) == 1, "closed within the timeout")
            var byte: UInt8 = 0
            #expect(recv(socket, &byte, 1, 0) <= 0, "an end, not a response")
        }
        let response = try await Self.curl(["--include", "\(running.base)/metrics"])
        #expect(response.hasPrefix("HTTP/1.1 200 OK\r\n"))
        _ = try await running.stop()
    }

    static func rawConnect(port: Int) throws -> CInt {
        let fd = socket(AF_INET, CInt(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else {
            close(fd)
            throw IOError(errnoCode: errno, reason: "connect")
        }
        return fd
    }

    @Test("GET /metrics answers 200 with the exposition; other paths 404; other methods 405")
    func serves() async throws {
        let running = try await Running.start()
        running.metrics.accepted()
        running.metrics.addBytes(upstream: 42, downstream: 0)

        #expect(running.log.lines.contains("info metrics served at 127.0.0.1:\(running.port)"))

        let response = try await Self.curl(["--include", "\(running.base)/metrics"])
        #expect(response.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(response.lowercased().contains("content-type: text/plain; version=0.0.4\r\n"))
        #expect(response.contains(#"tcpproxy_connections_accepted_total{listener="main",target="127.0.0.1:80"} 1"#))
        #expect(
            response.contains(
                #"tcpproxy_bytes_total{listener="main",target="127.0.0.1:80",direction="upstream"} 42"#
            )
        )

        let withQuery = try await Self.curl([
            "--write-out", "%{http_code}", "--output", "/dev/null", "\(running.base)/metrics?x=1",
        ])
        #expect(withQuery == "200")

        let notFound = try await Self.curl(["--include", "\(running.base)/nope"])
        #expect(notFound.hasPrefix("HTTP/1.1 404 Not Found\r\n"))

        let post = try await Self.curl(["--include", "--request", "POST", "\(running.base)/metrics"])
        #expect(post.hasPrefix("HTTP/1.1 405 Method Not Allowed\r\n"))
        #expect(post.lowercased().contains("allow: get, head\r\n"))

        let malformed = try await Self.curl(["--include", "--request", "NOT-A-METHOD", "\(running.base)/metrics"])
        #expect(malformed.hasPrefix("HTTP/1.1 400 Bad Request\r\n"))

        let head = try await Self.curl(["--head", "\(running.base)/metrics"])
        #expect(head.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(head.hasSuffix("\r\n\r\n"))  // headers only
        #expect(head.lowercased().contains("content-length: "))

        let elapsed = try await running.stop()
        #expect(elapsed < .seconds(3))
    }

    @Test("keep-alive: several requests share one connection")
    func keepAlive() async throws {
        let running = try await Running.start()
        let out = try await Self.curl([
            "--write-out", "%{http_code} %{num_connects}\\n", "--output", "/dev/null",
            "--output", "/dev/null", "--output", "/dev/null",
            "\(running.base)/metrics", "\(running.base)/nope", "\(running.base)/metrics",
        ])
        #expect(out == "200 1\n404 0\n200 0\n")

        // HTTP/1.0 without keep-alive: the server closes after the response.
        let http10 = try await Self.curl(["--http1.0", "--include", "\(running.base)/metrics"])
        #expect(http10.hasPrefix("HTTP/1.0 200 OK\r\n"))
        #expect(http10.lowercased().contains("connection: close\r\n"))

        let elapsed = try await running.stop()
        #expect(elapsed < .seconds(3))
    }

    @Test("shutdown closes the socket and idle keep-alive connections promptly")
    func shutdown() async throws {
        let running = try await Running.start()
        // An idle client connection that sends nothing.
        let client = try await ClientBootstrap(group: running.group)
            .connect(host: "127.0.0.1", port: running.port)
            .get()

        let elapsed = try await running.stopKeepingGroup()
        #expect(elapsed < .seconds(1))
        try await client.closeFuture.get()  // the server closed it

        // The port is free again: nothing listens there.
        let after = try await Self.curl([
            "--write-out", "%{http_code}", "--output", "/dev/null", "\(running.base)/metrics",
        ])
        #expect(after == "000")
        try await running.group.shutdownGracefully()
    }

    @Test("a client stuck in the middle of a request does not hold up shutdown for long")
    func stuckClient() async throws {
        let running = try await Running.start()
        let client = try await ClientBootstrap(group: running.group)
            .connect(host: "127.0.0.1", port: running.port)
            .get()
        try await client.writeAndFlush(ByteBuffer(string: "GET /metrics HTTP/1.1\r\nHost: x\r\n")).get()
        try await Task.sleep(for: .milliseconds(100))

        let elapsed = try await running.stopKeepingGroup()
        #expect(elapsed < MetricsEndpoint.shutdownGrace.asDuration + .seconds(1))
        try await client.closeFuture.get()  // the server closed it
        try await running.group.shutdownGracefully()
    }

    @Test("a port in use fails with ListenerError: address already in use")
    func portInUse() async throws {
        let running = try await Running.start()
        let second = MetricsEndpoint(
            endpoint: Endpoint(host: "127.0.0.1", port: running.port),
            registry: PrometheusCollectorRegistry(),
            group: running.group,
            logger: Logger(label: "test")
        )
        do {
            try await second.run()
            Issue.record("run() returned")
        } catch let error as ListenerError {
            #expect(error.description == "cannot listen on 127.0.0.1:\(running.port) (--metrics): address already in use")
        }
        _ = try await running.stop()
    }
}

extension MetricsEndpointTests.Running {
    /// Cancels the service and returns how long it took to stop, leaving the event loops running.
    func stopKeepingGroup() async throws -> Duration {
        let start = ContinuousClock.now
        self.task.cancel()
        try await self.task.value
        return ContinuousClock.now - start
    }
}

extension TimeAmount {
    fileprivate var asDuration: Duration { .nanoseconds(self.nanoseconds) }
}
