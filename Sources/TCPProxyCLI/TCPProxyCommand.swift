import ArgumentParser

#if canImport(Glibc)
import Glibc
#endif

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
        subcommands: [
            ForwardCommand.self, TransparentCommand.self, SOCKSCommand.self, MuxCommand.self, DemuxCommand.self, RunCommand.self,
        ]
    )
}

@main
enum TCPProxyMain {
    static func main() async {
        blockShutdownSignals()
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

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread and so in every thread started after it.
///
/// libdispatch, under swift-service-lifecycle's `UnixSignalsSequence`, receives signals through a
/// `signalfd`, which sees a signal only while every thread blocks it. A thread that leaves it unblocked
/// (NIO's event loops would, being started first) can be picked by the kernel to take the signal,
/// where it is ignored and lost: under load a SIGTERM then did nothing. So block before any thread exists.
private func blockShutdownSignals() {
    var signals = sigset_t()
    sigemptyset(&signals)
    sigaddset(&signals, SIGINT)
    sigaddset(&signals, SIGTERM)
    sigaddset(&signals, SIGHUP)
    pthread_sigmask(SIG_BLOCK, &signals, nil)
}
