import Logging
import NIOCore

/// `socks` mode: every admitted client first goes through a SOCKS handshake (``SOCKSHandshakeHandler``),
/// which then bridges it to the destination it asked for.
struct SOCKSStarter: BridgeStarter {
    let socks: SOCKSConfiguration
    var resolve: SOCKSResolver = SOCKSConnector.resolveWithGetaddrinfo

    /// Makes the starter of a listener and, as that listener starts, warns if it is an open proxy: a
    /// non-loopback listen address with neither `--allow` nor `--users` (SPEC §3 socks).
    /// - Parameters:
    ///   - socks: the SOCKS options.
    ///   - configuration: the listener's configuration (its address and admission policy).
    ///   - logger: the listener's logger.
    init(_ socks: SOCKSConfiguration, listener configuration: ProxyConfiguration, logger: Logger) {
        self.socks = socks
        for warning in CIDR.hostBitWarnings(socks.denyDestinations, option: "--deny-destination") {
            logger.warning("\(warning)")
        }
        if Self.isOpenProxy(socks, listen: configuration.listen, admission: configuration.admission) {
            logger.warning(
                "open socks proxy: anyone who can reach this address can use it (add --allow or --users)",
                metadata: ["listen": "\(configuration.listen)"]
            )
        }
    }

    func start(client: Channel, setup: BridgeSetup) throws {
        let socks = self.socks
        let resolve = self.resolve
        let handler = SOCKSHandshakeHandler(setup: setup, socks: socks) { request in
            SOCKSConnector(destination: request.destination, socks: socks, resolve: resolve)
        }
        try client.pipeline.syncOperations.addHandler(handler)
    }

    /// Whether a listener on `listen` would let anyone who can reach it through: the address is not loopback,
    /// and neither `--allow` nor `--users` restricts who may use it.
    static func isOpenProxy(_ socks: SOCKSConfiguration, listen: Endpoint, admission: AdmissionPolicy) -> Bool {
        socks.users == nil && admission.allow.isEmpty && !Self.isLoopback(listen.host)
    }

    /// Whether `host` is a loopback address (`127.0.0.0/8`, `::1`) or `localhost`. Other names count as not
    /// loopback: they may resolve to anything.
    static func isLoopback(_ host: String) -> Bool {
        if host.lowercased() == "localhost" { return true }
        guard let address = try? SocketAddress(ipAddress: host, port: 0) else { return false }
        let loopback = ["127.0.0.0/8", "::1/128"].compactMap { try? CIDR(parsing: $0) }
        return loopback.contains { $0.contains(address) }
    }
}
