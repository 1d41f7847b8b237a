import ArgumentParser
import Logging
import NIOCore
import TCPProxyCore

/// `tcpproxy mux --listen HOST:PORT --tunnel HOST:PORT`: many clients carried over one tunnel connection
/// to a `demux` (SPEC §3, docs/MUX-PROTOCOL.md).
struct MuxCommand: ModeCommand {
    static let configuration = CommandConfiguration(
        commandName: "mux",
        abstract: "Carry every client as a stream over one tunnel connection to a demux.",
        discussion: """
            Each client becomes a stream in a framed protocol with per-stream flow control, so one stalled \
            client never slows the others. The tunnel is kept alive with PING; when it drops, its streams are \
            reset and it is reconnected with backoff (100 ms doubling to 5 s). Clients that arrive while it \
            is down wait up to --connect-timeout.

            Examples:
              tcpproxy demux --listen :7000 --target 127.0.0.1:80      # on the server side
              tcpproxy mux --listen 127.0.0.1:8080 --tunnel server.example:7000
            """
    )

    @Option(
        help: "Where to accept clients: HOST:PORT, [IPV6]:PORT, or :PORT for every IPv4 interface.",
        transform: { try parseEndpoint($0, option: "--listen") }
    )
    var listen: Endpoint

    @Option(help: "The demux to carry clients to: HOST:PORT or [IPV6]:PORT.", transform: { try parseDestination($0, option: "--tunnel") })
    var tunnel: Endpoint

    @Option(parsing: .unconditional, help: "Tunnel connections to keep; streams are spread across them.")
    var tunnels: Int = 1

    @Option(help: "Ask the demux to connect every stream to this HOST:PORT (it must allow it with --allow-open-target).")
    var openTarget: String?

    @OptionGroup(title: "Tunnel protocol")
    var mux: MuxProtocolOptions

    @OptionGroup var options: CommonOptions

    var destinations: [Endpoint] { [self.tunnel] }

    func validate() throws {
        try self.options.refuseDirectEngine()
        try refuseLoop(target: self.tunnel, listen: self.listen, what: "--tunnel")
        if self.tunnels < 1 || self.tunnels > 64 {
            throw ValidationError("invalid value '\(self.tunnels)' for --tunnels (use a number from 1 to 64)")
        }
        if let openTarget = self.openTarget {
            _ = try parseDestination(openTarget, option: "--open-target")
        }
        try self.mux.check(self.options)
    }

    func run() async throws {
        try await self.runPlan(name: "mux")
    }

    func plan(name: String) -> ModePlan {
        var configuration = self.mux.configuration(listen: self.listen, options: self.options)
        configuration.tunnel = self.tunnel
        configuration.tunnels = self.tunnels
        configuration.openTarget = self.openTarget
        configuration.name = name
        let threads = self.options.threads ?? System.coreCount
        // The mux runs its streams on event loops of its own (one per tunnel, up to --threads); the runner's
        // loop only serves --metrics.
        let settings = configuration
        return ModePlan(sharedThreads: 1) { _, logger, factory in
            let metrics = factory.map {
                ProxyMetrics(listener: name, target: "\(settings.tunnel!)", factory: $0, tunnelMetrics: true)
            }
            return [MuxService(configuration: settings, threads: threads, logger: logger, metrics: metrics)]
        }
    }
}

/// The options `mux` and `demux` share: the protocol's limits and keep-alive.
struct MuxProtocolOptions: ParsableArguments {
    /// The windows `--window` may set.
    static let windowRange = "use 16K to 1G"

    @Option(parsing: .unconditional, help: "Most concurrent streams per tunnel.")
    var maxStreams: Int = 1024

    @Option(
        parsing: .unconditional,
        help: "Per-stream flow-control window, each direction (e.g. 256K).",
        transform: { try CommonOptions.size($0, option: "--window", expecting: MuxProtocolOptions.windowRange) }
    )
    var window: ByteSize = ByteSize(bytes: 256 * 1024)

    @Option(parsing: .unconditional, help: "Seconds between keep-alive PINGs on a tunnel.")
    var pingInterval: DecimalOption = 5

    @Option(parsing: .unconditional, help: "Seconds without a PONG before the tunnel peer counts as dead and the tunnel is closed.")
    var pingTimeout: DecimalOption = 10

    /// Rejects values out of range, and options the mux modes do not support.
    func check(_ options: CommonOptions) throws {
        if self.maxStreams < 1 || self.maxStreams > 1_000_000 {
            throw ValidationError("invalid value '\(self.maxStreams)' for --max-streams (use a number from 1 to 1000000)")
        }
        if self.window.bytes < 16 * 1024 || self.window.bytes > 1 << 30 {
            throw ValidationError("invalid size '\(self.window)' for --window (\(Self.windowRange))")
        }
        for (name, value) in [("--ping-interval", self.pingInterval), ("--ping-timeout", self.pingTimeout)]
        where !value.isWithin(0...3600, excludingLowerBound: true) {
            throw ValidationError("invalid value '\(value.text)' for \(name) (use seconds from more than 0 to 3600)")
        }
        // The stream data path has no per-chunk hooks for shaping, faults or capture (a bridge's separate
        // path for them does not apply), and the tunnel carries no client addresses for PROXY headers.
        let perChunk = "streams have no per-chunk hooks; put a forward proxy with it in front of the mux or behind the demux"
        let unsupported: [(String, Bool, String)] = [
            ("--proxy-protocol", options.proxyProtocol != nil, "the tunnel does not carry client addresses"),
            ("--accept-proxy-protocol", options.acceptProxyProtocol, "the tunnel does not carry client addresses"),
            ("--capture", options.observability.capture != nil, perChunk),
            ("--upstream-rate", options.observability.upstreamRate != nil, perChunk),
            ("--downstream-rate", options.observability.downstreamRate != nil, perChunk),
            ("--latency", options.observability.latency != nil, perChunk),
            ("--corrupt", (options.observability.corrupt?.value ?? 0) > 0, perChunk),
        ]
        for (name, used, reason) in unsupported where used {
            throw ValidationError("\(name) is not supported in mux and demux modes (\(reason))")
        }
    }

    /// The settings these options and the common ones describe.
    func configuration(listen: Endpoint, options: CommonOptions) -> MuxConfiguration {
        var configuration = MuxConfiguration(
            listen: listen,
            bridge: options.bridgeConfiguration,
            admission: options.admissionPolicy
        )
        configuration.maximumStreams = self.maxStreams
        configuration.receiveWindow = self.window.bytes
        configuration.pingInterval = CommonOptions.timeAmount(self.pingInterval.value) ?? .seconds(5)
        configuration.pingTimeout = CommonOptions.timeAmount(self.pingTimeout.value) ?? .seconds(10)
        return configuration
    }
}
