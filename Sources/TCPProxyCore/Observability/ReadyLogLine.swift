import Logging

extension Logger {
    /// A ready line: a listener's `listening on ADDRESS:PORT` (SPEC §1) or the metrics endpoint's address.
    /// Logged at info, or at the configured level when that is higher: with `--log-level warning` and port 0,
    /// this line is still the only place that shows the port that was bound.
    func logReady(_ message: Logger.Message, metadata: Logger.Metadata? = nil) {
        self.log(level: Swift.max(.info, self.logLevel), message, metadata: metadata)
    }
}
