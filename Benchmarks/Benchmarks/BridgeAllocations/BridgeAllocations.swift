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

    init(fixture: ProxyFixture) {
        self.fixture = fixture
    }

    func close() async throws {
        self.client?.close()
        self.server?.close()
        try self.fixture.waitForNoBridges()
        try await self.fixture.stop()
    }
}

/// Whether the client talks to the server through tcpproxy's forward bridge or straight (the harness's own
/// cost, which should be 0).
enum Path: String, CaseIterable {
    case direct
    case bridge
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
            let fixture = try await ProxyFixture.start(bridge: bridge, logging: logging)
            let session = Session(fixture: fixture)
            if connected {
                let (client, server) = try path == .bridge ? fixture.openBridge() : fixture.openDirect()
                session.client = client
                session.server = server
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
        let (client, server) = try path == .bridge ? fixture.openBridge() : fixture.openDirect()
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
        if path == .bridge { try fixture.waitForNoBridges() }
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

/// How far a data benchmark's p90 may rise before `thresholds check` fails: two samples of the bridge's timer
/// (8 mallocs each, every 1.25 s), which land in more than a tenth of the batches when a loaded machine makes
/// batches slow. An allocation per chunk or per round trip would add 1000 or 100 per batch, far more.
let timerTolerance = 16

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

    for path in Path.allCases {
        proxyBenchmark(
            "chunks-16KiB-x\(chunksPerIteration)-lockstep",
            path: path,
            connected: true,
            mallocTolerance: path == .direct ? 0 : timerTolerance,
            warmUp: { try lockstepChunks($0, count: 200) }
        ) { _, session in
            try lockstepChunks(session, count: chunksPerIteration)
        }

        proxyBenchmark(
            "chunks-16KiB-x\(chunksPerIteration)-stream",
            path: path,
            connected: true,
            // Plus NIO now and then reading into a fresh 64 KiB buffer under back-pressure (2 mallocs each).
            mallocTolerance: path == .direct ? 0 : timerTolerance + 4,
            warmUp: { try streamChunks($0, count: 500) }
        ) { _, session in
            try streamChunks(session, count: chunksPerIteration)
        }

        proxyBenchmark(
            "request-response-100B-x\(roundTripsPerIteration)",
            path: path,
            connected: true,
            mallocTolerance: path == .direct ? 0 : timerTolerance,
            warmUp: { try roundTrips($0, count: 200) }
        ) { _, session in
            try roundTrips(session, count: roundTripsPerIteration)
        }

        proxyBenchmark(
            "connections-x\(connectionsPerIteration)-loglevel-warning",
            path: path,
            connected: false,
            mallocTolerance: path == .direct ? 0 : connectionsPerIteration,
            warmUp: { try connections($0, path: path, count: 20) }
        ) { _, session in
            try connections(session, path: path, count: connectionsPerIteration)
        }
    }

    proxyBenchmark(
        "connections-x\(connectionsPerIteration)-loglevel-info",
        path: .bridge,
        logging: .defaultInfo,
        connected: false,
        mallocTolerance: connectionsPerIteration,
        warmUp: { try connections($0, path: .bridge, count: 20) }
    ) { _, session in
        try connections(session, path: .bridge, count: connectionsPerIteration)
    }
}
