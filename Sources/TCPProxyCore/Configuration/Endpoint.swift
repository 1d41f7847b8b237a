/// A `HOST:PORT` pair as given on the command line, before any name resolution.
///
/// `HOST` is an IPv4 address, an IPv6 address in brackets (`[::1]:8080`) or a name; `:PORT` alone
/// means every IPv4 interface (`0.0.0.0`), as HAProxy's and nginx's `:PORT` do: `[::]:PORT` takes IPv6
/// (and IPv4 where the kernel is dual-stack), with clients' IPv4 addresses then written IPv4-mapped.
public struct Endpoint: Hashable, Sendable, CustomStringConvertible {
    /// The host: an address literal (IPv6 without brackets) or a name.
    public var host: String
    /// The TCP port, 0 for an ephemeral one.
    public var port: Int

    /// - Parameters:
    ///   - host: an address literal (IPv6 without brackets) or a name.
    ///   - port: the TCP port.
    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `HOST:PORT`, `[V6]:PORT` or `:PORT`.
    /// - Parameter text: the text from the command line.
    /// - Parameter defaultHost: the host used for `:PORT`.
    /// - Throws: ``EndpointError`` naming what is wrong.
    public init(parsing text: String, defaultHost: String = "0.0.0.0") throws {
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw EndpointError.malformed(text) }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { throw EndpointError.malformed(text) }
            portText = rest.dropFirst()
            guard host.contains(":") else { throw EndpointError.malformed(text) }
        } else {
            guard let colon = text.lastIndex(of: ":") else { throw EndpointError.malformed(text) }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            // An unbracketed IPv6 address is ambiguous (`::1:80`): ask for brackets.
            guard !host.contains(":") else { throw EndpointError.malformed(text) }
        }
        self.host = host.isEmpty ? defaultHost : String(host)
        self.port = try Endpoint.parsePort(String(portText))
    }

    /// Parses an address to connect to (`--target`, `--tunnel`): as ``init(parsing:defaultHost:)``, but port 0,
    /// which only a listener can use, is refused.
    public init(parsingDestination text: String) throws {
        try self.init(parsing: text)
        try self.checkDestination()
    }

    /// Refuses port 0 for an address to connect to (only a listener can use it).
    public func checkDestination() throws(EndpointError) {
        if self.port == 0 { throw EndpointError.zeroDestinationPort(self.description) }
    }

    /// Parses a decimal port from 0 to 65535.
    public static func parsePort(_ text: String) throws -> Int {
        guard !text.isEmpty, text.count <= 5, text.allSatisfy({ $0.isASCII && $0.isNumber }),
            let port = Int(text), port <= 65535
        else { throw EndpointError.badPort(text) }
        return port
    }

    /// `host:port`, with brackets around an IPv6 host.
    public var description: String {
        self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)"
    }
}

/// Why a `HOST:PORT` could not be read.
public enum EndpointError: Error, Hashable, CustomStringConvertible {
    /// The text is not of the form `HOST:PORT`, `[V6]:PORT` or `:PORT`.
    case malformed(String)
    /// The port is not a number from 0 to 65535.
    case badPort(String)
    /// An address to connect to has port 0 (an ephemeral port is for listening).
    case zeroDestinationPort(String)
    /// A host is empty where the command line needs one.
    case emptyHost(String)

    public var description: String {
        switch self {
        case .malformed(let text): "invalid address '\(text)' (use HOST:PORT, [IPV6]:PORT or :PORT)"
        case .badPort(let text): "invalid port '\(text)' (use a number from 0 to 65535)"
        case .zeroDestinationPort(let text): "invalid address '\(text)' to connect to: port 0 is for listening (use 1 to 65535)"
        case .emptyHost(let what): "empty \(what) (use an address or a name)"
        }
    }
}
