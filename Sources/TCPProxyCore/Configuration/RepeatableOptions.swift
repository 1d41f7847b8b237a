/// Which options a command line (or a run file's list) may give more than once.
///
/// ArgumentParser keeps the last value of any other option given twice, so `--listen a --listen b` would
/// listen on `b` alone without a word. ``repeated(in:mode:)`` finds that mistake, so it can be refused.
public enum RepeatableOptions {
    /// Long names, without dashes, of the options of `mode` (a subcommand's name; `nil` for the seed
    /// command lines) that add a value each time they are given.
    public static func names(mode: String?) -> Set<String> {
        let everyMode: Set<String> = ["allow", "trusted-proxy"]
        switch mode {
        case "forward": return everyMode.union(["target"])
        case "socks": return everyMode.union(["deny-destination"])
        default: return everyMode
        }
    }

    /// The first option of `mode` that `words` give more than once although it takes one value (its name
    /// without dashes), and how many times; `nil` if there is none. Words after `--` are not options.
    public static func repeated(in words: [String], mode: String?) -> (name: String, count: Int)? {
        let repeatable = Self.names(mode: mode)
        var counts: [Substring: Int] = [:]
        var first: Substring?
        for word in words {
            if word == "--" { break }
            guard word.hasPrefix("--"), word.count > 2 else { continue }
            let name = word.dropFirst(2).prefix { $0 != "=" }
            guard !repeatable.contains(String(name)) else { continue }
            counts[name, default: 0] += 1
            if first == nil, counts[name] == 2 { first = name }
        }
        return first.map { (String($0), counts[$0] ?? 2) }
    }

    /// The one-line answer to an option given `count` times.
    public static func message(name: String, count: Int) -> String {
        "--\(name) given \(count) times: give it once (only the last would count)"
    }
}
