import NIOCore

/// The settings of a `mux` or `demux` process (SPEC §3, `docs/MUX-PROTOCOL.md`).
public struct MuxConfiguration: Sendable, Hashable {
    /// A short name for logs and metrics: the mode, or the entry's name in a `run` file.
    public var name = ""
    /// Where to accept clients (mux) or tunnel connections (demux).
    public var listen: Endpoint
    /// Mux: the demux to open tunnels to.
    public var tunnel: Endpoint?
    /// Mux: how many tunnel connections to keep; streams are spread across them.
    public var tunnels = 1
    /// Mux: a `HOST:PORT` to name in every OPEN (the demux uses it only with `--allow-open-target`).
    public var openTarget: String?
    /// Demux: where every stream goes (unless an OPEN names an allowed target).
    public var target: Endpoint?
    /// Demux: honour targets named in OPEN frames.
    public var allowOpenTarget = false
    /// Per-stream limits and timeouts, as for bridges (high-water mark, stall, idle, connect, drain).
    public var bridge: BridgeConfiguration
    /// Who may connect (mux: clients; demux: tunnel peers), and (mux) how many clients at once.
    public var admission: AdmissionPolicy
    /// Most concurrent streams per tunnel.
    public var maximumStreams = MuxFrame.defaultMaximumStreams
    /// How many bytes of each stream the peer may send ahead of what this end has written out (`--window`);
    /// announced to the peer when the stream starts, so the two ends' windows may differ.
    public var receiveWindow = MuxFrame.defaultInitialWindow
    /// The largest DATA payload sent and accepted.
    public var maximumPayload = MuxFrame.defaultMaximumPayload
    /// How often each end sends PING.
    public var pingInterval: TimeAmount = .seconds(5)
    /// A PING not answered within this long means the peer is dead: the tunnel is closed.
    public var pingTimeout: TimeAmount = .seconds(10)
    /// Reconnect backoff: first delay and cap.
    public var reconnectInitial: TimeAmount = .milliseconds(100)
    public var reconnectMaximum: TimeAmount = .seconds(5)

    public init(listen: Endpoint, bridge: BridgeConfiguration = .init(), admission: AdmissionPolicy = .init()) {
        self.listen = listen
        self.bridge = bridge
        self.admission = admission
    }
}
