import ArgumentParser
import TCPProxyCore

/// `tcpproxy forward --listen HOST:PORT --target HOST:PORT`: every client goes to the target.
struct ForwardCommand: ModeCommand {
    static let configuration = CommandConfiguration(
        commandName: "forward",
        abstract: "Forward every client to a target.",
        discussion: """
            Examples:
              tcpproxy forward --listen 127.0.0.1:8080 --target 127.0.0.1:80
              tcpproxy forward --listen :8080 --target 10.0.0.1:80 --target 10.0.0.2:80,weight=2 --health-interval 2
            """
    )

    @Option(
        help: "Where to accept clients: HOST:PORT, [IPV6]:PORT, or :PORT for every IPv4 interface.",
        transform: { try parseEndpoint($0, option: "--listen") }
    )
    var listen: Endpoint

    @Option(
        help: "A server to forward to: HOST:PORT or [IPV6]:PORT, optionally ,weight=N (repeatable).",
        transform: { text in
            do { return try TargetSpec(parsing: text) } catch { throw ValidationError("\(error)") }
        }
    )
    var target: [TargetSpec]

    @Option(help: "How clients are spread over several targets: roundrobin, leastconn or random (weighted).")
    var balance: BalanceAlgorithm = .roundrobin

    @Option(parsing: .unconditional, help: "Check each target with a TCP connect every this many seconds (2 up, 3 down in a row).")
    var healthInterval: DecimalOption?

    var destinations: [Endpoint] { self.target.map(\.endpoint) }

    func validate() throws {
        if self.target.isEmpty {
            throw ValidationError("missing --target (give at least one)")
        }
        for target in self.target {
            try refuseLoop(target: target.endpoint, listen: self.listen)
        }
        // Each check is a connect to every target: more often than ten times a second is a flood, not a check.
        if let healthInterval, !healthInterval.isWithin(0.1...3600) {
            throw ValidationError("invalid value '\(healthInterval.text)' for --health-interval (use seconds from 0.1 to 3600)")
        }
        // Here rather than in ProxyRunner (which checks every mode): a usage error of this subcommand.
        if self.options.engine == .direct,
            let obstacle = self.proxyConfiguration(name: "forward").directEngineObstacle(capturing: self.options.observability.capture != nil)
        {
            throw ValidationError("--engine direct cannot serve this listener: \(obstacle)")
        }
    }

    @OptionGroup var options: CommonOptions

    func run() async throws {
        try await self.runPlan(name: "forward")
    }

    func plan(name: String) -> ModePlan {
        ModePlan(listeners: [self.proxyConfiguration(name: name)])
    }

    private func proxyConfiguration(name: String) -> ProxyConfiguration {
        ProxyConfiguration(
            listen: self.listen,
            mode: .forward(
                ForwardConfiguration(
                    targets: self.target,
                    balance: self.balance,
                    healthInterval: self.healthInterval.flatMap { CommonOptions.timeAmount($0.value) }
                )
            ),
            name: name,
            bridge: self.options.bridgeConfiguration,
            admission: self.options.admissionPolicy,
            acceptProxyProtocol: self.options.acceptProxyProtocol
        )
    }
}

/// Parses `HOST:PORT` for an option, with a usage error naming the option.
func parseEndpoint(_ text: String, option: String) throws -> Endpoint {
    do {
        return try Endpoint(parsing: text)
    } catch {
        throw ValidationError("\(error)")
    }
}

/// An address to connect to (`--tunnel`, demux's `--target`): port 0 is a usage error.
func parseDestination(_ text: String, option: String) throws -> Endpoint {
    do {
        return try Endpoint(parsingDestination: text)
    } catch {
        throw ValidationError("\(error)")
    }
}

/// A target that is the listener's own address would send every client back into the listener until
/// descriptors run out (forward and the seed command lines), or park every client on a tunnel to itself
/// (mux, demux): a usage error.
func refuseLoop(target: Endpoint, listen: Endpoint, what: String = "target") throws {
    if target.loops(into: listen) {
        throw ValidationError("\(what) \(target) is this listener's own address: every client would loop back into it")
    }
}
