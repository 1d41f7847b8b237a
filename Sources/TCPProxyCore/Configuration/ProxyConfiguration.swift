import NIOCore

/// Everything a listener needs to run, turned from the command line (or a file) into values.
///
/// The CLI builds one of these and hands it to ``Listener``; nothing in the engine reads argv.
public struct ProxyConfiguration: Sendable {
    /// Where to accept clients.
    public var listen: Endpoint
    /// How each client's server is found.
    public var mode: ProxyMode
    /// A short name for logs: the mode, e.g. `forward`.
    public var name: String
    /// Bridge limits and timeouts.
    public var bridge: BridgeConfiguration
    /// Who may connect, and how many at once.
    public var admission: AdmissionPolicy

    /// - Parameters:
    ///   - listen: where to accept clients.
    ///   - mode: how each client's server is found.
    ///   - name: a short name for logs.
    ///   - bridge: limits and timeouts for each bridge.
    ///   - admission: who may connect, and how many at once.
    public init(
        listen: Endpoint,
        mode: ProxyMode,
        name: String = "forward",
        bridge: BridgeConfiguration = .init(),
        admission: AdmissionPolicy = .init()
    ) {
        self.listen = listen
        self.mode = mode
        self.name = name
        self.bridge = bridge
        self.admission = admission
    }
}

/// How a listener finds each client's server (SPEC §3).
public enum ProxyMode: Sendable, Hashable, CustomStringConvertible {
    /// Every client goes to this target.
    case forward(target: Endpoint)

    public var description: String {
        switch self {
        case .forward(let target): "forward to \(target)"
        }
    }
}

/// The limits and timeouts of one bridge (SPEC §2).
public struct BridgeConfiguration: Sendable, Hashable {
    /// Most bytes buffered per direction before the proxy stops reading from that direction's source.
    public var highWaterMark: Int = 64 * 1024
    /// A direction that holds data and delivers none of it for this long aborts the bridge; `nil` disables.
    public var stallTimeout: TimeAmount? = .seconds(10)
    /// A bridge with no traffic either way for this long is closed; `nil` disables.
    public var idleTimeout: TimeAmount? = nil
    /// How long to wait for the server connection.
    public var connectTimeout: TimeAmount = .seconds(10)
    /// After a shutdown signal, how long a bridge may go on before it is closed; `nil` waits forever.
    public var drainTimeout: TimeAmount? = .seconds(10)

    public init() {}
}
