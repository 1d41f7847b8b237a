import ArgumentParser
import TCPProxyCore

/// `tcpproxy transparent --listen HOST:PORT [--mode tproxy|redirect] [--spoof-source]`: connections the
/// Linux firewall sends here go on to their original destination (SPEC §3, docs/TRANSPARENT.md).
struct TransparentCommand: ModeCommand {
    static let configuration = CommandConfiguration(
        commandName: "transparent",
        abstract: "Forward intercepted connections to their original destination (TPROXY or REDIRECT).",
        discussion: """
            --mode redirect (the default) takes connections from an iptables REDIRECT or DNAT rule (nftables \
            redirect, dnat) and reads each one's original destination from conntrack; it needs no privilege \
            and no special routing. --mode tproxy takes connections from an iptables TPROXY rule (nftables \
            tproxy); it needs CAP_NET_ADMIN (or CAP_NET_RAW) and a policy route. --spoof-source connects to each server from \
            the client's own address; it needs CAP_NET_ADMIN (or CAP_NET_RAW), and the server's replies must be routed back \
            through this host. A connection whose original destination is this listener itself is refused. \
            The rules and routes, for IPv4 and IPv6, are in docs/TRANSPARENT.md.

            Examples:
              tcpproxy transparent --listen :15001
              tcpproxy transparent --listen [::]:15001 --mode tproxy --spoof-source
            """
    )

    @Option(
        help: "Where to accept intercepted clients: HOST:PORT, [IPV6]:PORT ([::]:PORT takes IPv4 too), or :PORT.",
        transform: { try parseEndpoint($0, option: "--listen") }
    )
    var listen: Endpoint

    // `--interception` too: in a `run` file, `mode:` names the listener's mode.
    @Option(
        name: [.customLong("mode"), .customLong("interception")],
        help: "How clients are intercepted: redirect (iptables REDIRECT/DNAT) or tproxy (iptables TPROXY); also --interception."
    )
    var mode: TransparentConfiguration.Interception = .redirect

    @Flag(help: "Connect to servers from the client's address, so they see the real client (CAP_NET_ADMIN or CAP_NET_RAW, routing).")
    var spoofSource = false

    @OptionGroup var options: CommonOptions

    func validate() throws {
        if self.options.engine == .direct,
            let obstacle = self.plan(name: "transparent").listeners[0]
                .directEngineObstacle(capturing: self.options.observability.capture != nil)
        {
            throw ValidationError("--engine direct cannot serve this listener: \(obstacle)")
        }
    }

    func run() async throws {
        try await self.runPlan(name: "transparent")
    }

    func plan(name: String) -> ModePlan {
        let configuration = ProxyConfiguration(
            listen: self.listen,
            mode: .transparent(TransparentConfiguration(interception: self.mode, spoofSource: self.spoofSource)),
            name: name,
            bridge: self.options.bridgeConfiguration,
            admission: self.options.admissionPolicy,
            acceptProxyProtocol: self.options.acceptProxyProtocol
        )
        return ModePlan(listeners: [configuration])
    }
}

extension TransparentConfiguration.Interception: ExpressibleByArgument {}
