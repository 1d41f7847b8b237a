import Yams

/// A `tcpproxy run CONFIG.yaml` file (docs/CONFIG.md): process-wide settings, and listeners that are each
/// the command line of a mode, written as YAML keys.
///
/// ```yaml
/// threads: 2
/// defaults:
///   stall-timeout: 30
/// listeners:
///   - name: web
///     mode: forward
///     listen: 127.0.0.1:8080
///     target: [10.0.0.1:80, 10.0.0.2:80]
/// ```
///
/// A key is the long option without `--`, a list repeats the option, `true` sets a flag and `false` leaves
/// it out. Turning the file into command lines keeps one meaning and one validation for every option: the
/// mode's own parser checks each entry.
public struct RunFile: Equatable, Sendable {
    /// One listener: its name, its mode, and the command line of that mode (`--listen … --target …`).
    public struct Entry: Equatable, Sendable {
        public var name: String
        public var mode: String
        public var arguments: [String]

        public init(name: String, mode: String, arguments: [String]) {
            self.name = name
            self.mode = mode
            self.arguments = arguments
        }
    }

    /// The process-wide options, as a command line (`--threads 2 --log-level debug`).
    public var settings: [String]
    public var entries: [Entry]

    public static let modes = ["forward", "socks", "transparent", "mux", "demux"]
    /// Options that belong to the whole process, not to one listener: only at the top of the file.
    public static let processKeys = ["threads", "log-level", "log-format", "metrics", "capture"]

    /// Which modes have an option (its long name without dashes): a default goes to the listeners whose mode
    /// has it, and one that no mode has is refused at its line.
    public typealias ModeOptions = @Sendable (_ mode: String, _ option: String) -> Bool

    /// Parses a file's text.
    /// - Parameter modeHas: which modes have which options; by default every mode has every option (each
    ///   default then goes to every listener, whose parser refuses what its mode lacks).
    /// - Throws: ``RunFileError`` naming the line and what is wrong.
    public init(yaml text: String, modeHas: ModeOptions = { _, _ in true }) throws(RunFileError) {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw RunFileError(Self.describe(error))
        } catch {
            throw RunFileError("not valid YAML: \(error)")
        }
        guard let root, case .mapping(let top) = root else {
            throw RunFileError("expected a mapping with `listeners:` at the top")
        }
        var settings: [String] = []
        var defaults: [(key: String, node: Node)] = []
        var listeners: Node.Sequence?
        for (keyNode, value) in top {
            let key = try Self.key(keyNode)
            switch key {
            case "listeners":
                guard case .sequence(let sequence) = value else {
                    throw RunFileError("`listeners` must be a list", at: value)
                }
                listeners = sequence
            case "defaults":
                guard case .mapping(let mapping) = value else {
                    throw RunFileError("`defaults` must be a mapping of options", at: value)
                }
                for (optionNode, optionValue) in mapping {
                    let option = try Self.key(optionNode)
                    try Self.checkListenerKey(option, at: optionNode, in: "defaults")
                    guard Self.modes.contains(where: { modeHas($0, option) }) else {
                        throw RunFileError("`\(option)` in `defaults` is an option of no mode (see tcpproxy MODE --help)", at: optionNode)
                    }
                    defaults.append((option, optionValue))
                }
            case _ where Self.processKeys.contains(key):
                settings += try Self.arguments(key, value, mode: nil)
            default:
                throw RunFileError(
                    "unknown key `\(key)` at the top (use listeners, defaults, \(Self.processKeys.joined(separator: ", ")))",
                    at: keyNode
                )
            }
        }
        guard let listeners, !listeners.isEmpty else {
            throw RunFileError("no listeners: give `listeners:` with at least one entry")
        }
        var entries: [Entry] = []
        for (index, node) in listeners.enumerated() {
            let entry = try Self.entry(node, index: index, defaults: defaults, modeHas: modeHas)
            if entries.contains(where: { $0.name == entry.name }) {
                throw RunFileError("two listeners are named `\(entry.name)`: names must be unique", at: node)
            }
            entries.append(entry)
        }
        self.settings = settings
        self.entries = entries
    }

    /// Reads and parses the file at `path`.
    public init(contentsOfFile path: String, modeHas: ModeOptions = { _, _ in true }) throws(RunFileError) {
        let text: String
        do {
            text = try TextFile.contents(of: path)
        } catch {
            throw RunFileError("cannot read \(path): \(error.reason)")
        }
        do {
            try self.init(yaml: text, modeHas: modeHas)
        } catch {
            throw RunFileError("\(path): \(error.message)")
        }
    }

    private static func entry(
        _ node: Node,
        index: Int,
        defaults: [(key: String, node: Node)],
        modeHas: ModeOptions
    ) throws(RunFileError) -> Entry {
        guard case .mapping(let mapping) = node else {
            throw RunFileError("listener \(index + 1) must be a mapping of options", at: node)
        }
        var name: String?
        var mode: String?
        var own: [(key: String, node: Node)] = []
        for (keyNode, value) in mapping {
            let key = try Self.key(keyNode)
            switch key {
            case "name":
                name = try Self.scalar(value, for: key)
            case "mode":
                mode = try Self.scalar(value, for: key)
            default:
                try Self.checkListenerKey(key, at: keyNode, in: "a listener")
                own.append((key, value))
            }
        }
        guard let mode else {
            throw RunFileError("listener \(index + 1) has no `mode` (one of \(Self.modes.joined(separator: ", ")))", at: node)
        }
        guard Self.modes.contains(mode) else {
            throw RunFileError("unknown mode `\(mode)` (use \(Self.modes.joined(separator: ", ")))", at: node)
        }
        let entryName = name ?? "\(mode)-\(index + 1)"
        guard !entryName.isEmpty, entryName.allSatisfy({ $0.isLetter || $0.isNumber || "-_.".contains($0) }) else {
            throw RunFileError("invalid name `\(entryName)` (use letters, digits, -, _ and .)", at: node)
        }
        // The listener's own keys win over the defaults; a default its mode does not have is not its.
        var arguments: [String] = []
        for (key, value) in defaults where !own.contains(where: { $0.key == key }) && modeHas(mode, key) {
            arguments += try Self.arguments(key, value, mode: mode)
        }
        for (key, value) in own {
            arguments += try Self.arguments(key, value, mode: mode)
        }
        return Entry(name: entryName, mode: mode, arguments: arguments)
    }

    /// A YAML error in one line, with the line it points at.
    private static func describe(_ error: YamlError) -> String {
        switch error {
        case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _),
            .composer(let context, let problem, let mark, _):
            return "line \(mark.line): not valid YAML: \(problem)" + (context.map { " (\($0.text) in line \($0.mark.line))" } ?? "")
        case .duplicatedKeysInMapping(let duplicates, let context):
            return "line \(context.mark.line): `\(duplicates.sorted().joined(separator: "`, `"))` given twice in one mapping (a list repeats an option: `target: [a, b]`)"
        default:
            return "not valid YAML: \(String(describing: error).split(separator: "\n").joined(separator: " "))"
        }
    }

    private static func checkListenerKey(_ key: String, at node: Node, in place: String) throws(RunFileError) {
        if key == "help" || key == "version" {
            throw RunFileError("`\(key)` is not an option of a listener", at: node)
        }
        if Self.processKeys.contains(key) {
            throw RunFileError("`\(key)` applies to the whole process: set it at the top of the file, not in \(place)", at: node)
        }
        if ["name", "mode", "listeners", "defaults"].contains(key) && place == "defaults" {
            throw RunFileError("`\(key)` cannot be a default", at: node)
        }
    }

    private static func key(_ node: Node) throws(RunFileError) -> String {
        guard case .scalar(let scalar) = node, !scalar.string.isEmpty, !scalar.string.hasPrefix("-") else {
            throw RunFileError("a key must be an option name without dashes, e.g. `listen`", at: node)
        }
        // YAML's merge key: Yams hands over the merged mapping itself, with the anchor's line.
        if scalar.string == "<<" {
            throw RunFileError("YAML merge keys (`<<`) are not supported: put shared options under `defaults:`", at: node)
        }
        return scalar.string
    }

    private static func scalar(_ node: Node, for key: String) throws(RunFileError) -> String {
        guard case .scalar(let scalar) = node else {
            throw RunFileError("`\(key)` must be a single value", at: node)
        }
        return scalar.string
    }

    /// `key: value` as command-line words: `--key=value` (so a value may start with `-`), repeated for a
    /// list; a flag for `true`, nothing for `false`.
    private static func arguments(_ key: String, _ node: Node, mode: String?) throws(RunFileError) -> [String] {
        switch node {
        case .scalar(let scalar):
            switch scalar.string {
            case "true" where scalar.style == .plain: return ["--\(key)"]
            case "false" where scalar.style == .plain: return []
            default: return ["--\(key)=\(scalar.string)"]
            }
        case .sequence(let sequence):
            // The command line would keep the last value and drop the rest without a word.
            if key == "listen" && sequence.count > 1 {
                throw RunFileError("`listen` takes one address: a listener listens once (write one listener per address)", at: node)
            }
            let repeatable = RepeatableOptions.names(mode: mode)
            if sequence.count > 1 && !repeatable.contains(key) {
                let lists = repeatable.sorted().joined(separator: ", ")
                throw RunFileError("`\(key)` takes one value, not a list (lists are for \(lists))", at: node)
            }
            var words: [String] = []
            for item in sequence {
                guard case .scalar(let scalar) = item else {
                    throw RunFileError("`\(key)` must be a value or a list of values", at: item)
                }
                words.append("--\(key)=\(scalar.string)")
            }
            return words
        case .mapping, .alias:
            throw RunFileError("`\(key)` must be a value or a list of values", at: node)
        }
    }
}

/// What is wrong with a `run` file, in one line.
public struct RunFileError: Error, CustomStringConvertible, Equatable {
    public var message: String

    public init(_ message: String) {
        self.message = message
    }

    init(_ message: String, at node: Node) {
        self.message = node.mark.map { "line \($0.line): \(message)" } ?? message
    }

    public var description: String { self.message }
}

/// What a reload changes: entries are matched by name; one whose mode or options differ is replaced.
public struct RunFileChanges: Equatable, Sendable {
    /// Same name, same command line: keeps its socket and its bridges.
    public var kept: [String] = []
    /// Only in the new file.
    public var started: [String] = []
    /// Same name, different mode or options: drained, and started anew.
    public var replaced: [String] = []
    /// Only in the old file: drained.
    public var stopped: [String] = []

    /// - Parameters:
    ///   - old: the entries running now.
    ///   - new: the new file's entries.
    ///   - same: whether an old entry and a new one of the same name are the same listener.
    public init(
        from old: [RunFile.Entry],
        to new: [RunFile.Entry],
        same: (RunFile.Entry, RunFile.Entry) -> Bool = RunFileChanges.sameListener
    ) {
        for entry in new {
            switch old.first(where: { $0.name == entry.name }) {
            case .none: self.started.append(entry.name)
            case .some(let previous) where same(previous, entry): self.kept.append(entry.name)
            case .some: self.replaced.append(entry.name)
            }
        }
        self.stopped = old.map(\.name).filter { name in !new.contains(where: { $0.name == name }) }
    }

    /// The same mode and the same options, whatever order different options come in (the order of one
    /// option's values, e.g. targets, is kept: it can matter).
    public static func sameListener(_ a: RunFile.Entry, _ b: RunFile.Entry) -> Bool {
        // Stable by option: one option's values keep their order.
        func normalized(_ arguments: [String]) -> [String] {
            arguments.enumerated()
                .sorted { ($0.element.prefix { $0 != "=" }, $0.offset) < ($1.element.prefix { $0 != "=" }, $1.offset) }
                .map(\.element)
        }
        return a.mode == b.mode && normalized(a.arguments) == normalized(b.arguments)
    }
}
