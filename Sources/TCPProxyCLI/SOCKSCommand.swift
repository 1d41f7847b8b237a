import ArgumentParser
import TCPProxyCore

/// `tcpproxy socks --listen HOST:PORT`: a SOCKS4, SOCKS4a and SOCKS5 server; each client names its destination.
struct SOCKSCommand: ModeCommand {
    static let configuration = CommandConfiguration(
        commandName: "socks",
        abstract: "A SOCKS4, SOCKS4a and SOCKS5 proxy: each client names its own destination.",
        discussion: """
            Examples:
              tcpproxy socks --listen 127.0.0.1:1080
              tcpproxy socks --listen :1080 --users users.txt --allow 10.0.0.0/8 --deny-destination 127.0.0.0/8

            A users file has one user:password per line (blank lines and lines starting with # are skipped).
            A file that cannot be read or parsed stops tcpproxy at start with exit status 1, naming the line.
            """
    )

    @Option(
        help: "Where to accept clients: HOST:PORT, [IPV6]:PORT, or :PORT for every IPv4 interface.",
        transform: { try parseEndpoint($0, option: "--listen") }
    )
    var listen: Endpoint

    @Option(help: "Require SOCKS5 username/password login (RFC 1929) against this file of user:password lines.")
    var users: String?

    @Option(parsing: .unconditional, help: "Seconds a client may take to send its request before it is closed.")
    var handshakeTimeout: DecimalOption = 10

    @Option(
        help: "Never connect clients to this network (repeatable), e.g. 127.0.0.0/8; checked after name resolution.",
        transform: { text in
            do { return try CIDR(parsing: text) } catch { throw ValidationError("\(error)") }
        }
    )
    var denyDestination: [CIDR] = []

    @OptionGroup var options: CommonOptions

    func validate() throws {
        try self.options.refuseDirectEngine()
        if !self.handshakeTimeout.isWithin(0...86_400, excludingLowerBound: true) {
            throw ValidationError(
                "invalid value '\(self.handshakeTimeout.text)' for --handshake-timeout (use seconds from more than 0 up to 86400)"
            )
        }
    }

    func run() async throws {
        try await self.runPlan(name: "socks")
    }

    func plan(name: String) throws -> ModePlan {
        var users: SOCKSUsers?
        if let path = self.users {
            do {
                users = try SOCKSUsers(contentsOfFile: path)
            } catch {
                throw ModePlanError(message: "\(error)")
            }
        }
        let socks = SOCKSConfiguration(
            users: users,
            handshakeTimeout: CommonOptions.timeAmount(self.handshakeTimeout.value) ?? .seconds(10),
            denyDestinations: self.denyDestination
        )
        let configuration = ProxyConfiguration(
            listen: self.listen,
            mode: .socks(socks),
            name: name,
            bridge: self.options.bridgeConfiguration,
            admission: self.options.admissionPolicy,
            acceptProxyProtocol: self.options.acceptProxyProtocol
        )
        return ModePlan(listeners: [configuration], fingerprint: users.hashValue)
    }
}
