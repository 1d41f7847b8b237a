import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import TCPProxyCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// How the fixture's tcpproxy logs.
enum FixtureLogging {
    /// `--log-level warning`: nothing is logged per connection.
    case quiet
    /// The CLI's default, `--log-level info --log-format text`: three lines per bridge, written to a
    /// standard error that the fixture points at `/dev/null` while it runs.
    case defaultInfo
}

/// A real `tcpproxy forward` listener on 127.0.0.1 with `--threads 1` (one event loop, and on the direct
/// engine one engine thread), run by a `ServiceGroup` as the CLI runs it, in front of a plain-socket server
/// (``LoopbackSocket``).
///
/// The benchmark thread plays both the client and the server with non-blocking sockets, so the only
/// code that runs on a NIO or engine thread is tcpproxy's.
final class ProxyFixture: @unchecked Sendable {
    let group: MultiThreadedEventLoopGroup
    let listener: Listener
    /// The server the proxy forwards to; its connections are accepted by the benchmark thread.
    let server: LoopbackSocket
    let serverPort: Int
    let proxyPort: Int
    private let serviceGroup: ServiceGroup
    private let runTask: Task<Void, Error>
    /// Standard error as it was before ``FixtureLogging/defaultInfo`` pointed it at `/dev/null`.
    private let savedStandardError: Int32?

    private init(
        group: MultiThreadedEventLoopGroup,
        listener: Listener,
        server: LoopbackSocket,
        serverPort: Int,
        proxyPort: Int,
        serviceGroup: ServiceGroup,
        runTask: Task<Void, Error>,
        savedStandardError: Int32?
    ) {
        self.group = group
        self.listener = listener
        self.server = server
        self.serverPort = serverPort
        self.proxyPort = proxyPort
        self.serviceGroup = serviceGroup
        self.runTask = runTask
        self.savedStandardError = savedStandardError
    }

    /// Starts the server and the proxy in front of it, and waits until the proxy listens.
    /// - Parameters:
    ///   - bridge: the bridge options (the CLI's defaults unless a benchmark says otherwise); its `engine`
    ///     says which engine serves the listener.
    ///   - logging: how tcpproxy logs.
    /// - Throws: ``FixtureError`` when `bridge.engine` is `.direct` but the listener does not qualify for
    ///   the direct engine (the listener would quietly run on NIO, and the numbers would be NIO's).
    static func start(bridge: BridgeConfiguration = .init(), logging: FixtureLogging = .quiet) async throws
        -> ProxyFixture
    {
        let (server, serverPort) = try LoopbackSocket.listen()
        let configuration = ProxyConfiguration(
            listen: Endpoint(host: "127.0.0.1", port: 0),
            mode: .forward(ForwardConfiguration(target: Endpoint(host: "127.0.0.1", port: serverPort))),
            bridge: bridge
        )
        if bridge.engine == .direct, let obstacle = configuration.directEngineObstacle(capturing: false) {
            server.close()
            throw FixtureError(description: "the listener does not qualify for the direct engine: \(obstacle)")
        }
        var savedStandardError: Int32? = nil
        let level: Logger.Level
        switch logging {
        case .quiet:
            level = .warning
        case .defaultInfo:
            level = .info
            savedStandardError = dup(2)
            let null = open("/dev/null", O_WRONLY)
            dup2(null, 2)
            close(null)
        }
        let logger = Logger(label: "tcpproxy") { label in ProxyLogHandler(label: label, format: .text, level: level) }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let listener = Listener(configuration: configuration, group: group, logger: logger)
        let serviceGroup = ServiceGroup(
            services: [listener],
            logger: Logger(label: "tcpproxy.lifecycle") { _ in SwiftLogNoOpLogHandler() }
        )
        let runTask = Task { try await serviceGroup.run() }
        let deadline = Deadline(secondsFromNow: LoopbackSocket.timeoutSeconds)
        while listener.localAddress == nil {
            guard !deadline.hasPassed else { throw LoopbackSocketError(operation: "proxy start", code: 0) }
            try await Task.sleep(for: .milliseconds(5))
        }
        return ProxyFixture(
            group: group,
            listener: listener,
            server: server,
            serverPort: serverPort,
            proxyPort: listener.localAddress!.port!,
            serviceGroup: serviceGroup,
            runTask: runTask,
            savedStandardError: savedStandardError
        )
    }

    /// A client connected through the proxy, and the server's end of the proxy's connection.
    func openBridge() throws -> (client: LoopbackSocket, server: LoopbackSocket) {
        let client = try LoopbackSocket.connect(port: self.proxyPort)
        return (client, try self.server.accept())
    }

    /// A client connected straight to the server: the harness baseline, with no proxy between.
    func openDirect() throws -> (client: LoopbackSocket, server: LoopbackSocket) {
        let client = try LoopbackSocket.connect(port: self.serverPort)
        return (client, try self.server.accept())
    }

    /// Waits until every bridge has ended (both sockets closed, the end logged and counted), so the
    /// bridge's teardown falls in the measured region of the connection that caused it.
    func waitForNoBridges() throws {
        let deadline = Deadline(secondsFromNow: LoopbackSocket.timeoutSeconds)
        var pause = timespec(tv_sec: 0, tv_nsec: 20_000)
        while self.listener.activeBridgeCount > 0 {
            guard !deadline.hasPassed else { throw LoopbackSocketError(operation: "bridge close", code: 0) }
            nanosleep(&pause, nil)
        }
    }

    /// Drains the listener as SIGTERM would, then stops the event loop and the server.
    func stop() async throws {
        await self.serviceGroup.triggerGracefulShutdown()
        try await self.runTask.value
        try await self.group.shutdownGracefully()
        self.server.close()
        if let saved = self.savedStandardError {
            dup2(saved, 2)
            close(saved)
        }
    }
}

/// The fixture cannot measure what the benchmark asks for.
struct FixtureError: Error, CustomStringConvertible {
    var description: String
}

/// Buffers allocated once per benchmark, outside the measured region.
final class TransferBuffers: @unchecked Sendable {
    let send: UnsafeMutableRawBufferPointer
    let receive: UnsafeMutableRawBufferPointer

    init(size: Int) {
        self.send = .allocate(byteCount: size, alignment: 16)
        self.send.initializeMemory(as: UInt8.self, repeating: 0x5A)
        self.receive = .allocate(byteCount: max(size, 64 * 1024), alignment: 16)
        self.receive.initializeMemory(as: UInt8.self, repeating: 0)
    }

    /// The first `count` bytes to send.
    func outgoing(_ count: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: self.send[0..<count])
    }

    /// Room for exactly `count` incoming bytes.
    func incoming(_ count: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(rebasing: self.receive[0..<count])
    }

    deinit {
        self.send.deallocate()
        self.receive.deallocate()
    }
}
