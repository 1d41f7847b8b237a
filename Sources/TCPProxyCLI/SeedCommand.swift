import ArgumentParser
import TCPProxyCore

/// The two command lines the seed documents use, kept so their users can switch without changes:
///
///     tcpproxy LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT [options]
///     tcpproxy TARGET_HOST TARGET_PORT LISTEN_PORT [options]        (listens on every IPv4 interface)
struct SeedCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tcpproxy",
        abstract: "Forward a port: the seed command lines.",
        usage: """
            tcpproxy LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT [options]
              tcpproxy TARGET_HOST TARGET_PORT LISTEN_PORT [options]
            """
    )

    @Argument(help: "LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT, or TARGET_HOST TARGET_PORT LISTEN_PORT.")
    var words: [String]

    @OptionGroup var options: CommonOptions

    /// The listen and target endpoints the words name.
    func endpoints() throws -> (listen: Endpoint, target: Endpoint) {
        func port(_ text: String) throws -> Int {
            do { return try Endpoint.parsePort(text) } catch { throw ValidationError("\(error)") }
        }
        func host(_ text: String, _ what: String) throws -> String {
            let host = text.hasPrefix("[") && text.hasSuffix("]") ? String(text.dropFirst().dropLast()) : text
            guard !host.allSatisfy(\.isWhitespace) else { throw ValidationError("\(EndpointError.emptyHost(what))") }
            return host
        }
        func target(_ hostText: String, _ portText: String) throws -> Endpoint {
            let target = Endpoint(host: try host(hostText, "TARGET_HOST"), port: try port(portText))
            do { try target.checkDestination() } catch { throw ValidationError("\(error)") }
            return target
        }
        switch self.words.count {
        case 4:
            return (
                Endpoint(host: try host(self.words[0], "LISTEN_HOST"), port: try port(self.words[1])),
                try target(self.words[2], self.words[3])
            )
        case 3:
            return (
                Endpoint(host: "0.0.0.0", port: try port(self.words[2])),
                try target(self.words[0], self.words[1])
            )
        default:
            // Words past the fourth are often the value of an option this form does not have (it takes the
            // options of every mode, not forward's own --balance or --health-interval).
            let extra =
                self.words.count > 4
                ? " (extra: \(self.words.dropFirst(4).joined(separator: " ")); forward's own options need 'tcpproxy forward')"
                : ""
            throw ValidationError(
                "expected 3 or 4 arguments, got \(self.words.count): "
                    + "LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT, or TARGET_HOST TARGET_PORT LISTEN_PORT" + extra
            )
        }
    }

    func validate() throws {
        let (listen, target) = try self.endpoints()
        try refuseLoop(target: target, listen: listen)
    }

    func run() async throws {
        let (listen, target) = try self.endpoints()
        let configuration = ProxyConfiguration(
            listen: listen,
            mode: .forward(ForwardConfiguration(target: target)),
            name: "forward",
            bridge: self.options.bridgeConfiguration,
            admission: self.options.admissionPolicy,
            acceptProxyProtocol: self.options.acceptProxyProtocol
        )
        try await ProxyRunner.run(ModePlan(listeners: [configuration]), options: self.options)
    }
}
