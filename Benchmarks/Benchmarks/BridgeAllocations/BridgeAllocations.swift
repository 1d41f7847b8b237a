import Benchmark
import TCPProxyCore

/// Bytes per chunk in the chunk benchmarks: what a client typically hands `write(2)` at once.
let chunkSize = 16 * 1024
/// Chunks per measured iteration: the malloc counts of one iteration divided by this are per chunk.
let chunksPerIteration = 1000
/// Request and response size, and round trips per measured iteration.
let messageSize = 100
let roundTripsPerIteration = 100
/// Connections per measured iteration.
let connectionsPerIteration = 10

/// What a benchmark works on: the proxy (or only its server, for the direct baselines), one open
/// connection for the data benchmarks, and buffers, all made before the measured region.
final class Session: @unchecked Sendable {
    let fixture: ProxyFixture
    let buffers = TransferBuffers(size: chunkSize)
    var client: LoopbackSocket?
    var server: LoopbackSocket?
    /// Every bridge of the session, `client`/`server` first (set up once: iterating allocates nothing).
    var bridges: [(client: LoopbackSocket, server: LoopbackSocket)] = []

    init(fixture: ProxyFixture) {
        self.fixture = fixture
    }

    func close() async throws {
        for (client, server) in self.bridges {
            client.close()
            server.close()
        }
        try self.fixture.waitForNoBridges()
        try await self.fixture.stop()
    }
}

/// How the client reaches the server; the benchmark's name ends in the raw value.
enum Path: String, CaseIterable {
    /// Straight to the server, no proxy: the harness's own cost, which should be 0.
    case direct
    /// Through tcpproxy's forward listener on the NIO engine (`--engine nio`): two channels per bridge.
    case nio
    /// Through tcpproxy's forward listener on the direct engine (`--engine direct`): its own threads,
    /// read(2)/write(2) or splice(2), no NIO channel.
    case engine

    /// Whether the client's bytes pass through tcpproxy.
    var isProxied: Bool { self != .direct }

    /// The engine the fixture's listener runs on. The direct baseline's listener only sits idle beside it.
    var engineMode: EngineMode { self == .engine ? .direct : .nio }
}

/// Registers a benchmark whose setup starts a proxy (and, for `connected`, opens one connection and
/// warms it with `warmUp`) and whose teardown closes everything. `mallocTolerance` is how far the p90 of
/// `mallocCountTotal` may exceed the stored threshold (`Thresholds/`) before `thresholds check` fails.
func proxyBenchmark(
    _ name: String,
    path: Path,
    logging: FixtureLogging = .quiet,
    bridge: BridgeConfiguration = .init(),
    connected: Bool,
    bridges: Int = 1,
    mallocTolerance: Int = 0,
    warmUp: @escaping (Session) throws -> Void = { _ in },
    body: @escaping (Benchmark, Session) throws -> Void
) {
    let holder = SessionHolder()
    Benchmark(
        // No spaces or slashes in names: package-benchmark 1.38.1 writes `Thresholds/` files with them
        // replaced but looks them up as they are.
        "\(name)-\(path.rawValue)",
        // `thresholds check` fails when the p90 malloc count exceeds the stored one by more than this.
        configuration: .init(thresholds: [.mallocCountTotal: .init(absolute: [.p90: mallocTolerance])]),
        closure: { benchmark in try body(benchmark, holder.session!) },
        setup: {
            var bridge = bridge
            bridge.engine = path.engineMode
            let fixture = try await ProxyFixture.start(bridge: bridge, logging: logging)
            let session = Session(fixture: fixture)
            if connected {
                for _ in 0..<bridges {
                    let (client, server) = try path.isProxied ? fixture.openBridge() : fixture.openDirect()
                    session.bridges.append((client, server))
                }
                session.client = session.bridges[0].client
                session.server = session.bridges[0].server
            }
            try warmUp(session)
            holder.session = session
        },
        teardown: {
            try await holder.session?.close()
            holder.session = nil
        }
    )
}

/// Hands the session from a benchmark's setup to its body and teardown.
final class SessionHolder: @unchecked Sendable {
    var session: Session?
}

// MARK: The measured operations

/// `count` chunks, each written whole to the client socket and then read whole from the server socket:
/// one chunk in flight, so the proxy forwards each one as its own read and write.
func lockstepChunks(_ session: Session, count: Int) throws {
    let client = session.client!
    let server = session.server!
    let outgoing = session.buffers.outgoing(chunkSize)
    let incoming = session.buffers.incoming(chunkSize)
    for _ in 0..<count {
        try client.writeAll(outgoing)
        try server.readExactly(into: incoming)
    }
}

/// `count` chunks written back to back while the server side drains: a continuous stream that fills the
/// proxy's write buffer, so back-pressure (reads paused and resumed) is part of what is measured.
func streamChunks(_ session: Session, count: Int) throws {
    var pump = StreamPump(sender: session.client!, receiver: session.server!, receiveBuffer: session.buffers.receive)
    let outgoing = session.buffers.outgoing(chunkSize)
    for _ in 0..<count {
        try pump.send(outgoing)
    }
    try pump.finish()
}

/// `count` request/response round trips of `messageSize` bytes each way.
func roundTrips(_ session: Session, count: Int) throws {
    let client = session.client!
    let server = session.server!
    let outgoing = session.buffers.outgoing(messageSize)
    let incoming = session.buffers.incoming(messageSize)
    for _ in 0..<count {
        try client.writeAll(outgoing)
        try server.readExactly(into: incoming)
        try server.writeAll(outgoing)
        try client.readExactly(into: incoming)
    }
}

/// `count` whole connections: connect, one byte each way, the client closes, the server reads EOF and
/// closes; then (through the proxy) wait until the bridge has ended.
func connections(_ session: Session, path: Path, count: Int) throws {
    let fixture = session.fixture
    let byte = session.buffers.outgoing(1)
    let incoming = session.buffers.incoming(1)
    for _ in 0..<count {
        let (client, server) = try path.isProxied ? fixture.openBridge() : fixture.openDirect()
        defer {
            client.close()
            server.close()
        }
        try client.writeAll(byte)
        try server.readExactly(into: incoming)
        try server.writeAll(byte)
        try client.readExactly(into: incoming)
        client.shutdownOutput()
        try server.readUntilEOF(scratch: session.buffers.receive)
        server.shutdownOutput()
        try client.readUntilEOF(scratch: session.buffers.receive)
        // On either engine the count drops only once both sockets are closed and the end is logged and
        // counted (the last thing a bridge does), so its whole teardown falls in this iteration.
        if path.isProxied { try fixture.waitForNoBridges() }
    }
}

// MARK: The benchmarks

let mallocMetrics: [BenchmarkMetric] = [
    .mallocCountTotal,
    .mallocCountSmall,
    .mallocCountLarge,
    .mallocBytesCount,
    .mallocFreeDelta,
    .wallClock,
    .throughput,
]

/// How far a data benchmark's p90 may rise before `thresholds check` fails: two samples of a busy bridge's
/// timeout timer (every 1.25 s, an eighth of the default `--stall-timeout`), which land in more than a tenth of
/// the batches when a loaded machine makes batches slow. A NIO bridge's sample costs 8 mallocs (reading
/// `TCP_INFO` through NIO's socket-option future); a sample on an engine thread costs 1 (see the README). An
/// allocation per chunk or per round trip would add 1000 or 100 per batch, far more.
func timerTolerance(_ path: Path) -> Int {
    switch path {
    case .direct: 0
    // The chunk benchmarks' NIO bridge is normally handed to the splice engine during warm-up (1 malloc a
    // sample from then on), but keeps NIO's 8 if the handover does not happen.
    case .nio: 2 * 8
    case .engine: 2 * 1
    }
}

/// `count` rounds of a request/response of `messageSize` bytes on every bridge of the session at once: all
/// the requests are written before any is read, and all the answers before any is read back, so the proxy
/// finds several sockets readable in one poll (the direct engine batches their reads and writes through
/// io_uring, docs/BRIDGE.md "Batched reads and writes").
func parallelRoundTrips(_ session: Session, count: Int) throws {
    let outgoing = session.buffers.outgoing(messageSize)
    let incoming = session.buffers.incoming(messageSize)
    for _ in 0..<count {
        for (client, _) in session.bridges { try client.writeAll(outgoing) }
        for (_, server) in session.bridges { try server.readExactly(into: incoming) }
        for (_, server) in session.bridges { try server.writeAll(outgoing) }
        for (client, _) in session.bridges { try client.readExactly(into: incoming) }
    }
}

/// How far a connection benchmark's p90 may rise. NIO's count moves with SwiftNIO itself, so a NIO bridge
/// may cost one more per connection; the direct engine's few records are ours alone, so its batches may only
/// take the odd timer sample of a bridge that is open when one falls due (twice), and one more record per
/// connection fails the check.
func connectionTolerance(_ path: Path) -> Int {
    switch path {
    case .direct: 0
    case .nio: connectionsPerIteration
    case .engine: timerTolerance(.engine)
    }
}

/// The chunk benchmarks once more with `--splice never`. With the default `--splice auto` a bridge that
/// carries 16 KiB chunks back to back is bulk (docs/BRIDGE.md, "The splice path"): within its first 512 KiB it
/// moves to pipes (the NIO bridge by a handover to the splice engine, the direct engine's own bridge in place),
/// so the default chunk benchmarks measure splice(2) on both engines. These keep each engine's own data path
/// under bulk: NIO's pipeline, and the direct engine's read(2)/write(2) through its scratch buffer.
let spliceNever: BridgeConfiguration = {
    var bridge = BridgeConfiguration()
    bridge.splice = .never
    return bridge
}()

let benchmarks: @Sendable () -> Void = {
    // One measured iteration is a batch (1000 chunks, 100 round trips, 10 connections): divide its malloc
    // count by the batch size for the count per unit. Warm-up iterations let NIO's receive-buffer pool and
    // adaptive read size settle before anything is measured.
    Benchmark.defaultConfiguration = .init(
        metrics: mallocMetrics,
        warmupIterations: 5,
        scalingFactor: .one,
        maxDuration: .seconds(3),
        maxIterations: 200
    )

    // The chunk benchmarks with the default `--splice auto` (bulk moves to pipes during warm-up) and, on the
    // proxied paths, with `--splice never` (each engine's own user-space data path).
    let chunkVariants: [(suffix: String, bridge: BridgeConfiguration, proxiedOnly: Bool)] = [
        ("", BridgeConfiguration(), false), ("-splice-never", spliceNever, true),
    ]
    for path in Path.allCases {
        for variant in chunkVariants where path.isProxied || !variant.proxiedOnly {
            proxyBenchmark(
                "chunks-16KiB-x\(chunksPerIteration)-lockstep\(variant.suffix)",
                path: path,
                bridge: variant.bridge,
                connected: true,
                mallocTolerance: timerTolerance(path),
                warmUp: { try lockstepChunks($0, count: 200) }
            ) { _, session in
                try lockstepChunks(session, count: chunksPerIteration)
            }

            proxyBenchmark(
                "chunks-16KiB-x\(chunksPerIteration)-stream\(variant.suffix)",
                path: path,
                bridge: variant.bridge,
                connected: true,
                // Plus NIO now and then reading into a fresh 64 KiB buffer under back-pressure (2 mallocs each).
                mallocTolerance: path == .nio ? timerTolerance(path) + 4 : timerTolerance(path),
                warmUp: { try streamChunks($0, count: 500) }
            ) { _, session in
                try streamChunks(session, count: chunksPerIteration)
            }
        }

        proxyBenchmark(
            "request-response-100B-x\(roundTripsPerIteration)",
            path: path,
            connected: true,
            mallocTolerance: timerTolerance(path),
            warmUp: { try roundTrips($0, count: 200) }
        ) { _, session in
            try roundTrips(session, count: roundTripsPerIteration)
        }

        proxyBenchmark(
            "request-response-100B-x\(roundTripsPerIteration)-4-bridges",
            path: path,
            connected: true,
            bridges: 4,
            mallocTolerance: timerTolerance(path),
            warmUp: { try parallelRoundTrips($0, count: 200) }
        ) { _, session in
            try parallelRoundTrips(session, count: roundTripsPerIteration)
        }

        proxyBenchmark(
            "connections-x\(connectionsPerIteration)-loglevel-warning",
            path: path,
            connected: false,
            mallocTolerance: connectionTolerance(path),
            warmUp: { try connections($0, path: path, count: 20) }
        ) { _, session in
            try connections(session, path: path, count: connectionsPerIteration)
        }
    }

    for path in Path.allCases where path.isProxied {
        proxyBenchmark(
            "connections-x\(connectionsPerIteration)-loglevel-info",
            path: path,
            logging: .defaultInfo,
            connected: false,
            mallocTolerance: connectionTolerance(path),
            warmUp: { try connections($0, path: path, count: 20) }
        ) { _, session in
            try connections(session, path: path, count: connectionsPerIteration)
        }
    }
}
