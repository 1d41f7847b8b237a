import Logging

extension Logger {
    /// A line the operator must always see: a listener's `listening on ADDRESS:PORT` (SPEC §1), the metrics
    /// endpoint's address, `run`'s summary of a reload. Logged at `level`, or at the configured level when
    /// that is higher: with `--log-level warning` and port 0, the ready line is still the only place that
    /// shows the port that was bound, and a reload that changed nothing still leaves its trace.
    public func logReady(_ message: Logger.Message, at level: Logger.Level = .info, metadata: Logger.Metadata? = nil) {
        self.log(level: Swift.max(level, self.logLevel), message, metadata: metadata)
    }
}
