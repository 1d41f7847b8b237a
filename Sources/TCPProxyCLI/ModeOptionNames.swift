import ArgumentParser
import Foundation

/// The long option names of each mode's command line, read from ArgumentParser's own description of its
/// parser (what `tcpproxy MODE --experimental-dump-help` prints), so they cannot drift from the parsers.
/// `run` gives each `defaults:` key only to the listeners whose mode has it.
enum ModeOptionNames {
    static let byMode: [String: Set<String>] = RunCommand.modes.mapValues { Self.names(of: $0) }

    /// Whether `mode` has `--option`.
    @Sendable static func has(_ mode: String, _ option: String) -> Bool {
        Self.byMode[mode]?.contains(option) ?? false
    }

    /// The part of ArgumentParser's tool description read here.
    private struct Description: Decodable {
        struct Command: Decodable {
            var arguments: [Argument]?
        }
        struct Argument: Decodable {
            var names: [Name]?
        }
        struct Name: Decodable {
            var kind: String
            var name: String
        }
        var command: Command
    }

    private static func names(of command: any ModeCommand.Type) -> Set<String> {
        guard let description = try? JSONDecoder().decode(Description.self, from: Data(command._dumpHelp().utf8)) else {
            return []
        }
        let names = (description.command.arguments ?? []).flatMap { $0.names ?? [] }
        return Set(names.filter { $0.kind == "long" }.map(\.name))
    }
}
