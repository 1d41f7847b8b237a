import ArgumentParser
import TCPProxyCore

/// `tcpproxy forward --listen HOST:PORT --target HOST:PORT`: every client goes to the target.
struct ForwardCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "forward",
        abstract: "Forward every client to a target.",
        discussion: """
            Example: tcpproxy forward --listen 127.0.0.1:8080 --target 127.0.0.1:80
            """
    )

    @Option(
        help: "Where to accept clients: HOST:PORT, [IPV6]:PORT, or :PORT for every interface.",
        transform: { try parseEndpoint($0, option: "--listen") }
    )
    var listen: Endpoint

    @Option(help: "The server to forward to: HOST:PORT or [IPV6]:PORT.", transform: { try parseEndpoint($0, option: "--target") })
    var target: Endpoint

    @OptionGroup var options: CommonOptions

    func run() async throws {
        let configuration = ProxyConfiguration(
            listen: self.listen,
            mode: .forward(target: self.target),
            name: "forward",
            bridge: self.options.bridgeConfiguration,
            admission: self.options.admissionPolicy
        )
        try await ProxyRunner.run([configuration], options: self.options)
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
