/// One `--target HOST:PORT[,weight=N]`.
public struct TargetSpec: Hashable, Sendable, CustomStringConvertible {
    /// Where it is.
    public var endpoint: Endpoint
    /// Its share of clients under `--balance` (1 or more).
    public var weight: Int

    public init(endpoint: Endpoint, weight: Int = 1) {
        self.endpoint = endpoint
        self.weight = weight
    }

    /// Parses `HOST:PORT` or `HOST:PORT,weight=N` (N from 1 to 1000, given once).
    public init(parsing text: String) throws {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false)
        guard parts.count <= 2 else { throw TargetSpecError(text: text) }
        self.endpoint = try Endpoint(parsingDestination: String(parts[0]))
        self.weight = 1
        if let option = parts.dropFirst().first {
            guard option.hasPrefix("weight="), let weight = Int(option.dropFirst("weight=".count)),
                (1...1000).contains(weight)
            else { throw TargetSpecError(text: text) }
            self.weight = weight
        }
    }

    public var description: String {
        self.weight == 1 ? self.endpoint.description : "\(self.endpoint),weight=\(self.weight)"
    }
}

/// A `--target` that could not be read.
public struct TargetSpecError: Error, Hashable, CustomStringConvertible {
    public var text: String
    public var description: String {
        "invalid target '\(self.text)' (use HOST:PORT or HOST:PORT,weight=N with N from 1 to 1000, once)"
    }
}
