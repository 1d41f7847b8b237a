import ArgumentParser

/// `tcpproxy`: the root command, its subcommands, and the seed command lines.
struct TCPProxyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tcpproxy",
        abstract: "A fast, dependable TCP proxy.",
        discussion: """
            Also: tcpproxy LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT [options]
                  tcpproxy TARGET_HOST TARGET_PORT LISTEN_PORT [options]
            """,
        version: "0.1.0",
        subcommands: [ForwardCommand.self]
    )
}

@main
enum TCPProxyMain {
    static func main() async {
        let arguments = Array(CommandLine.arguments.dropFirst())
        let subcommands = Set(
            TCPProxyCommand.configuration.subcommands.map { $0._commandName } + ["help"]
        )
        // A first word that is neither an option nor a subcommand starts a seed command line.
        if let first = arguments.first, !first.hasPrefix("-"), !subcommands.contains(first) {
            await SeedCommand.main(arguments)
        } else {
            await TCPProxyCommand.main(arguments)
        }
    }
}
