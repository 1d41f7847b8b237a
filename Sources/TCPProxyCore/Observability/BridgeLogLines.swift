import Logging
import NIOCore

/// The info lines of a bridge's life, written alike by the NIO bridge (``Bridge``), the listeners and the
/// direct engine (``DirectAcceptor``), so `--engine` changes no log line.
extension Logger {
    /// A client turned away by `--allow` or `--max-connections`.
    func logConnectionRejected(client: SocketAddress?, reason: CloseReason) {
        self.info(
            "connection rejected",
            metadata: ["client.address": "\(client.logDescription)", "close.reason": "\(reason)"]
        )
    }

    func logBridgeAccepted(id: UInt64, client: SocketAddress?) {
        self.info("bridge accepted", metadata: ["bridge.id": .stringConvertible(id), "client.address": "\(client.logDescription)"])
    }

    func logBridgeConnected(id: UInt64, server: String) {
        self.info("bridge connected", metadata: ["bridge.id": .stringConvertible(id), "server.address": "\(server)"])
    }

    func logBridgeConnectFailed(id: UInt64, server: String, error: String) {
        self.info(
            "bridge connect failed",
            metadata: ["bridge.id": .stringConvertible(id), "server.address": "\(server)", "error": "\(error)"]
        )
    }

    func logBridgeClosed(id: UInt64, reason: CloseReason, upstream: UInt64, downstream: UInt64, duration: TimeAmount) {
        self.info(
            "bridge closed",
            metadata: [
                "bridge.id": .stringConvertible(id), "close.reason": "\(reason)",
                "bytes.upstream": .stringConvertible(upstream), "bytes.downstream": .stringConvertible(downstream),
                "duration": .stringConvertible(Double(duration.nanoseconds) / 1e9),
            ]
        )
    }
}
