import ArgumentParser
import TCPProxyCore

/// `tcpproxy run CONFIG.yaml`: many listeners from one file; SIGHUP re-reads it (docs/CONFIG.md).
struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run the listeners a YAML file describes; SIGHUP re-reads it.",
        discussion: """
            Each listener is a mode's command line written as keys: `listen: 127.0.0.1:8080` is \
            `--listen 127.0.0.1:8080`, a list repeats the option, `true` sets a flag. `threads`, `log-level`, \
            `log-format`, `metrics` and `capture` apply to the whole process and go at the top; `defaults` \
            holds options every listener gets unless it sets them itself. On SIGHUP, listeners whose \
            entry did not change keep their sockets and connections; changed ones are drained and started \
            anew, removed ones drained, new ones started. A file that does not parse is reported and the \
            running listeners stay as they are.

            Example file:
              listeners:
                - name: web
                  mode: forward
                  listen: 127.0.0.1:8080
                  target: [10.0.0.1:80, 10.0.0.2:80]
                - name: socks
                  mode: socks
                  listen: 127.0.0.1:1080
            """
    )

    @Argument(help: "The YAML file.")
    var file: String

    @Flag(help: "Only check the file (as haproxy -c, nginx -t): print what it would run and exit 0, or the problem and exit 64.")
    var check = false

    /// The mode subcommands a file entry's `mode` names.
    static let modes: [String: any ModeCommand.Type] = [
        "forward": ForwardCommand.self,
        "socks": SOCKSCommand.self,
        "transparent": TransparentCommand.self,
        "mux": MuxCommand.self,
        "demux": DemuxCommand.self,
    ]

    func run() async throws {
        let loaded: ConfigRunner.Loaded
        do {
            loaded = try ConfigRunner.load(self.file)
        } catch {
            // A file that cannot be used is a usage error (SPEC §1: one line, status 64).
            ProxyRunner.printError(error.message)
            throw ExitCode(64)
        }
        if self.check {
            var text = "\(self.file): \(loaded.entries.count) listener\(loaded.entries.count == 1 ? "" : "s"), ok\n"
            for planned in loaded.entries {
                text += "  \(planned.entry.name): \(planned.entry.mode) \(planned.entry.arguments.joined(separator: " "))\n"
            }
            print(text, terminator: "")
            return
        }
        try await ConfigRunner.run(loaded, path: self.file)
    }
}
