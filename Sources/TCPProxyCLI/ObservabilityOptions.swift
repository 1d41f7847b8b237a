import ArgumentParser
import TCPProxyCore

/// Options that shape, show or damage the traffic (SPEC §1): rates, data logging, capture, metrics and
/// fault injection. Every mode takes them.
struct ObservabilityOptions: ParsableArguments {
    @Option(
        parsing: .unconditional,
        help: "Most bytes per second read from each client, per bridge (512K, 10M, 1G; 1024-based).",
        transform: { try CommonOptions.size($0, option: "--upstream-rate") }
    )
    var upstreamRate: ByteSize?

    @Option(
        parsing: .unconditional,
        help: "Most bytes per second read from each server, per bridge (512K, 10M, 1G; 1024-based).",
        transform: { try CommonOptions.size($0, option: "--downstream-rate") }
    )
    var downstreamRate: ByteSize?

    @Flag(help: "Log a hex dump of every chunk, both directions, tagged with bridge id and direction.")
    var logData = false

    @Option(help: "Write all proxied payload to this pcap file (tcpdump -r, Wireshark).")
    var capture: String?

    @Option(
        help: "Serve Prometheus metrics at http://HOST:PORT/metrics.",
        transform: { try parseEndpoint($0, option: "--metrics") }
    )
    var metrics: Endpoint?

    @Option(
        parsing: .unconditional,
        help: "Fault injection: delay every chunk by MS milliseconds, plus up to JITTER_MS more (MS[:JITTER_MS]).",
        transform: { text in
            guard let latency = LatencySpec(parsing: text) else {
                throw ValidationError("invalid latency '\(text)' for --latency (use MS or MS:JITTER_MS, e.g. 100 or 100:20)")
            }
            return latency
        }
    )
    var latency: LatencySpec?

    @Option(parsing: .unconditional, help: "Fault injection: flip one random bit in a chunk with this probability (0 to 1).")
    var corrupt: DecimalOption?

    @Option(help: "Which directions --latency and --corrupt apply to: upstream, downstream or both.")
    var faultDirection: FaultDirection = .both

    func validate() throws {
        if let corrupt, !corrupt.isWithin(0...1) {
            throw ValidationError("invalid probability '\(corrupt.text)' for --corrupt (use a number from 0 to 1)")
        }
    }

    /// Adds these options to a bridge configuration.
    func apply(to configuration: inout BridgeConfiguration) {
        configuration.upstreamRate = self.upstreamRate?.bytes
        configuration.downstreamRate = self.downstreamRate?.bytes
        configuration.logData = self.logData
        configuration.latency = self.latency?.delay
        configuration.latencyJitter = self.latency?.jitter ?? .zero
        configuration.corruptProbability = self.corrupt?.value ?? 0
        configuration.faultDirections = self.faultDirection.directions
    }
}

/// `--fault-direction`.
enum FaultDirection: String, ExpressibleByArgument, CaseIterable {
    case upstream, downstream, both

    var directions: Set<Direction> {
        switch self {
        case .upstream: [.upstream]
        case .downstream: [.downstream]
        case .both: [.upstream, .downstream]
        }
    }
}
