import Logging
import NIOCore

/// What a `mux` or `demux` service gives every tunnel and stream: settings, logger, metrics, bookkeeping.
struct MuxStreamEnvironment: Sendable {
    /// The settings.
    var configuration: MuxConfiguration
    /// The service's logger (streams add `bridge.id` and `stream.id`).
    var logger: Logger
    /// The listener's metrics: each stream counts as a bridge.
    var metrics: ProxyMetrics?
    /// Open streams of this listener: the mux claims a slot when it admits a client, the demux when it
    /// opens a stream; a stream gives it back when it ends.
    var streams: AdmissionCounter
    /// Demux: where streams go.
    var target: ConnectTarget?

    /// - Parameters:
    ///   - configuration: the settings.
    ///   - logger: the service's logger.
    ///   - metrics: the listener's metrics, if `--metrics` is on.
    ///   - target: demux: where streams go.
    init(configuration: MuxConfiguration, logger: Logger, metrics: ProxyMetrics? = nil, target: ConnectTarget? = nil) {
        self.configuration = configuration
        self.logger = logger
        self.metrics = metrics
        self.streams = AdmissionCounter()
        self.target = target
    }

    /// A stream began (accepted at the mux, opened at the demux); its slot is already claimed.
    func streamStarted() {
        self.metrics?.bridgeOpened()
    }

}
