import ArgumentParser
import TCPProxyCore

/// `tcpproxy demux --listen HOST:PORT --target HOST:PORT`: accepts tunnels from `mux` processes and connects
/// each of their streams to the target (SPEC §3, docs/MUX-PROTOCOL.md).
struct DemuxCommand: ModeCommand {
    static let configuration = CommandConfiguration(
        commandName: "demux",
        abstract: "Accept tunnels from a mux and connect each of their streams to a target.",
        discussion: """
            A stream whose server connection fails is reset with the reason; a peer that breaks the protocol \
            gets a GOAWAY with an error code and its tunnel is closed. --allow limits who may open tunnels.

            Example:
              tcpproxy demux --listen :7000 --target 127.0.0.1:80
            """
    )

    @Option(
        help: "Where to accept tunnel connections: HOST:PORT, [IPV6]:PORT, or :PORT for every IPv4 interface.",
        transform: { try parseEndpoint($0, option: "--listen") }
    )
    var listen: Endpoint

    @Option(help: "Where every stream goes: HOST:PORT or [IPV6]:PORT.", transform: { try parseDestination($0, option: "--target") })
    var target: Endpoint

    @Flag(help: "Connect a stream to the HOST:PORT its OPEN names (a mux's --open-target), instead of --target.")
    var allowOpenTarget = false

    @OptionGroup(title: "Tunnel protocol")
    var mux: MuxProtocolOptions

    @OptionGroup var options: CommonOptions

    var destinations: [Endpoint] { [self.target] }

    func validate() throws {
        try self.options.refuseDirectEngine()
        try refuseLoop(target: self.target, listen: self.listen)
        try self.mux.check(self.options)
    }

    func run() async throws {
        try await self.runPlan(name: "demux")
    }

    func plan(name: String) -> ModePlan {
        var configuration = self.mux.configuration(listen: self.listen, options: self.options)
        configuration.target = self.target
        configuration.allowOpenTarget = self.allowOpenTarget
        configuration.name = name
        // --allow applies to the muxes that open tunnels, --max-connections to the streams they open.
        let settings = configuration
        return ModePlan { group, logger, factory in
            let metrics = factory.map {
                ProxyMetrics(listener: name, target: "\(settings.target!)", factory: $0, tunnelMetrics: true)
            }
            return [DemuxService(configuration: settings, group: group, logger: logger, metrics: metrics)]
        }
    }
}
