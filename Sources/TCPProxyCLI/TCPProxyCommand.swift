import ArgumentParser
import TCPProxyCore

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
        ignoreBrokenPipes()
        let arguments = Array(CommandLine.arguments.dropFirst())
        let subcommands = Set(
            TCPProxyCommand.configuration.subcommands.map { $0._commandName } + ["help"]
        )
        // A first word that is neither an option nor a subcommand starts a seed command line.
        if let first = arguments.first, !first.hasPrefix("-"), !subcommands.contains(first) {
            refuseRepeatedOptions(arguments, of: SeedCommand.self)
            await SeedCommand.main(arguments)
        } else {
            refuseRepeatedOptions(arguments, of: TCPProxyCommand.self)
            await TCPProxyCommand.main(arguments)
        }
    }
}

/// Exits with a usage error if `arguments` give an option twice that takes one value: ArgumentParser would
/// keep the last and drop the other without a word.
private func refuseRepeatedOptions(_ arguments: [String], of root: ParsableCommand.Type) {
    let subcommand =
        root == TCPProxyCommand.self
        ? TCPProxyCommand.configuration.subcommands.first { $0._commandName == arguments.first } : nil
    guard let (name, count) = RepeatableOptions.repeated(in: arguments, mode: subcommand?._commandName) else { return }
    let error = ValidationError(RepeatableOptions.message(name: name, count: count))
    guard let subcommand else { root.exit(withError: error) }
    // As ArgumentParser words a usage error of a subcommand (its own `exit` would name it without `tcpproxy`).
    let path = "tcpproxy \(subcommand._commandName)"
    let usage = TCPProxyCommand.usageString(for: subcommand)
    let text = Array("Error: \(error)\nUsage: \(usage)\n  See '\(path) --help' for more information.\n".utf8)
    _ = text.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
    exit(ExitCode.validationFailure.rawValue)
}

/// SIGPIPE ignored for the whole process, as network servers do: a write to a pipe or socket whose reader
/// has gone fails with `EPIPE` instead of ending the process. Log lines go to standard error, often a pipe
/// (`| tee`, a log shipper); one written from the signal task after its reader exited used to kill a proxy
/// that had no NIO socket of its own (NIO ignores SIGPIPE only once it makes one), on SIGHUP or in the
/// middle of a drain.
private func ignoreBrokenPipes() {
    signal(SIGPIPE, SIG_IGN)
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
