import Logging
import NIOCore

extension Logger {
    /// `--log-data`: a `data` event with a chunk's size and hex dump (NIO's detailed format). Asked for
    /// explicitly, so logged at info, or at the configured level when that is higher (as the ready lines
    /// are): `--log-level warning` does not silently drop it.
    /// - Parameter bridgeID: the `bridge.id`, when the logger does not carry it already.
    func logData(_ buffer: ByteBuffer, direction: Direction, bridgeID: UInt64? = nil) {
        var metadata: Logger.Metadata = [
            "direction": "\(direction)", "bytes": .stringConvertible(buffer.readableBytes),
            "hex": "\(buffer.hexDump(format: .detailed))",
        ]
        if let bridgeID { metadata["bridge.id"] = .stringConvertible(bridgeID) }
        self.log(level: Swift.max(.info, self.logLevel), "data", metadata: metadata)
    }
}
