import ArgumentParser
import TCPProxyCore

/// The two command lines the seed documents use, kept so their users can switch without changes:
///
///     tcpproxy LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT [options]
///     tcpproxy TARGET_HOST TARGET_PORT LISTEN_PORT [options]        (listens on every interface)
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
        func host(_ text: String) -> String {
            text.hasPrefix("[") && text.hasSuffix("]") ? String(text.dropFirst().dropLast()) : text
        }
        switch self.words.count {
        case 4:
            return (
                Endpoint(host: host(self.words[0]), port: try port(self.words[1])),
                Endpoint(host: host(self.words[2]), port: try port(self.words[3]))
            )
        case 3:
            return (
                Endpoint(host: "0.0.0.0", port: try port(self.words[2])),
                Endpoint(host: host(self.words[0]), port: try port(self.words[1]))
            )
        default:
            throw ValidationError(
                "expected 3 or 4 arguments, got \(self.words.count): "
                    + "LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT, or TARGET_HOST TARGET_PORT LISTEN_PORT"
            )
        }
    }

    func validate() throws {
        _ = try self.endpoints()
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
