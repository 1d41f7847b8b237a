/// The life of one bridge, a client connection plus its server connection (SPEC §2), without I/O.
///
/// The handler feeds it what happened on either socket and carries out the ``Action`` it returns.
/// End of stream travels per direction: EOF from one side becomes a write shutdown towards the
/// other once everything held for it is written, while the other direction keeps flowing. The
/// bridge ends when both sockets are closed; the first reason to end it is the one reported.
struct BridgeStateMachine {
    /// One of the two connections of a bridge.
    enum Side: Hashable, Sendable {
        /// The connection the proxy accepted.
        case client
        /// The connection the proxy made to the target.
        case server

        /// The other side.
        var partner: Side { self == .client ? .server : .client }
    }

    /// What the handler must do next.
    enum Action: Equatable {
        /// Nothing.
        case none
        /// The server is connected: write what the client sent so far and let the client be read.
        /// When the client already sent EOF, shut down writing to the server after that data.
        case startForwarding(thenShutdownServerOutput: Bool)
        /// Write what is held for this side, then shut down writing to it (`SHUT_WR`).
        case shutdownOutput(Side)
        /// Both halves of this side's socket are shut: close it.
        case closeChannel(Side)
        /// End the bridge for this reason: close both sockets.
        case close(CloseReason)
        /// Both sockets are closed: report the bridge as ended for this reason.
        case report(CloseReason)
    }

    /// What is known of one socket.
    private struct SideState {
        /// We read EOF from it.
        var inputClosed = false
        /// We shut down writing to it (asked for; it takes effect after pending writes).
        var outputShutdownRequested = false
        /// The shutdown of writing has taken effect.
        var outputClosed = false
        /// The socket is closed.
        var closed = false
    }

    private enum State {
        /// The server connection is being made; client EOF is remembered until it is up.
        case connecting(clientInputClosed: Bool)
        /// Both connections are up.
        case forwarding(client: SideState, server: SideState)
        /// The bridge is ending for this reason; waiting for both sockets to close.
        case closing(CloseReason, clientClosed: Bool, serverClosed: Bool)
        /// Reported.
        case done
    }

    private var state: State = .connecting(clientInputClosed: false)

    /// Whether the server connection is up and data flows both ways.
    var isForwarding: Bool {
        if case .forwarding = self.state { return true }
        return false
    }

    /// Whether the server connection is still being made (and the bridge is not ending).
    var isConnecting: Bool {
        if case .connecting = self.state { return true }
        return false
    }

    /// Whether the bridge is ending or has ended.
    var isClosing: Bool {
        switch self.state {
        case .closing, .done: true
        case .connecting, .forwarding: false
        }
    }

    /// Where the two directions stand, for a handover to the splice engine.
    struct SpliceReadiness: Equatable {
        /// Client → server already ended: the client's EOF was read and writing to the server is shut.
        var upstreamEnded: Bool
        /// Server → client already ended.
        var downstreamEnded: Bool
    }

    /// Whether the bridge can move to the splice engine now: both sockets open, and each direction either
    /// fully open or fully ended (EOF read and the write shutdown taken effect), never half way, and not
    /// both ended. `nil` otherwise.
    var spliceReadiness: SpliceReadiness? {
        guard case .forwarding(let client, let server) = self.state, !client.closed, !server.closed else { return nil }
        func ended(source: SideState, sink: SideState) -> Bool? {
            if !source.inputClosed && !sink.outputShutdownRequested { return false }
            if source.inputClosed && sink.outputClosed { return true }
            return nil
        }
        guard let upstream = ended(source: client, sink: server), let downstream = ended(source: server, sink: client),
            !(upstream && downstream)
        else { return nil }
        return SpliceReadiness(upstreamEnded: upstream, downstreamEnded: downstream)
    }

    /// The server connection is up.
    mutating func connectSucceeded() -> Action {
        switch self.state {
        case .connecting(let clientInputClosed):
            var client = SideState()
            var server = SideState()
            client.inputClosed = clientInputClosed
            server.outputShutdownRequested = clientInputClosed
            self.state = .forwarding(client: client, server: server)
            return .startForwarding(thenShutdownServerOutput: clientInputClosed)
        case .closing, .done:
            // The client went away while we were connecting: the caller closes the new connection.
            return .close(self.reason ?? .clientReset)
        case .forwarding:
            preconditionFailure("connectSucceeded in \(self.state)")
        }
    }

    /// The server connection could not be made.
    mutating func connectFailed(timedOut: Bool) -> Action {
        switch self.state {
        case .connecting:
            return self.beginClosing(timedOut ? .connectTimeout : .connectFailed)
        case .closing, .done:
            return .none
        case .forwarding:
            preconditionFailure("connectFailed in \(self.state)")
        }
    }

    /// This side sent EOF: nothing more will be read from it.
    mutating func inputClosed(on side: Side) -> Action {
        switch self.state {
        case .connecting:
            // Only the client exists yet; its EOF is passed on once the server is connected.
            self.state = .connecting(clientInputClosed: true)
            return .none
        case .forwarding(var client, var server):
            let action: Action
            switch side {
            case .client:
                client.inputClosed = true
                server.outputShutdownRequested = true
                action = .shutdownOutput(.server)
            case .server:
                server.inputClosed = true
                client.outputShutdownRequested = true
                action = .shutdownOutput(.client)
            }
            self.state = .forwarding(client: client, server: server)
            return action
        case .closing, .done:
            return .none
        }
    }

    /// Writing to this side has been shut down, after everything held for it was written.
    mutating func outputClosed(on side: Side) -> Action {
        guard case .forwarding(var client, var server) = self.state else { return .none }
        let bothHalvesShut: Bool
        switch side {
        case .client:
            client.outputClosed = true
            bothHalvesShut = client.inputClosed
        case .server:
            server.outputClosed = true
            bothHalvesShut = server.inputClosed
        }
        self.state = .forwarding(client: client, server: server)
        return bothHalvesShut ? .closeChannel(side) : .none
    }

    /// Reading from, or writing to, this side failed (a reset, a broken pipe).
    mutating func errorCaught(on side: Side) -> Action {
        switch self.state {
        case .connecting where side == .server:
            // A failing connect is reported through `connectFailed`, with the right reason.
            return .none
        case .connecting, .forwarding:
            return self.beginClosing(side == .client ? .clientReset : .serverReset)
        case .closing, .done:
            return .none
        }
    }

    /// A timeout fired, or the proxy is shutting down: end the bridge for `reason`.
    mutating func abort(_ reason: CloseReason) -> Action {
        switch self.state {
        case .connecting, .forwarding:
            return self.beginClosing(reason)
        case .closing, .done:
            return .none
        }
    }

    /// This side's socket is closed.
    mutating func channelClosed(_ side: Side) -> Action {
        switch self.state {
        case .connecting:
            // Before the server connection is up, only the client can close (a failed connect
            // comes in through `connectFailed`).
            guard side == .client else { return .none }
            self.state = .closing(.clientReset, clientClosed: true, serverClosed: false)
            return .close(.clientReset)

        case .forwarding(var client, var server):
            var action = Action.none
            switch side {
            case .client:
                client.closed = true
                if !client.inputClosed && client.outputClosed {
                    // NIO reports a peer's EOF as a plain close when our write side was already
                    // shut (a read error would have come first as `errorCaught`): pass the EOF on.
                    // A close while the shutdown was still waiting for writes is a failed write.
                    client.inputClosed = true
                    server.outputShutdownRequested = true
                    action = .shutdownOutput(.server)
                }
            case .server:
                server.closed = true
                if !server.inputClosed && server.outputClosed {
                    server.inputClosed = true
                    client.outputShutdownRequested = true
                    action = .shutdownOutput(.client)
                }
            }
            if client.closed && server.closed {
                self.state = .done
                return .report(client.inputClosed && server.inputClosed ? .completed : (side == .client ? .clientReset : .serverReset))
            }
            if client.inputClosed && server.inputClosed {
                // Both EOFs were seen; the other socket closes once its last bytes are written.
                self.state = .forwarding(client: client, server: server)
                return action
            }
            // A socket closed while its direction was still open: the peer went away.
            let reason: CloseReason = side == .client ? .clientReset : .serverReset
            self.state = .closing(reason, clientClosed: client.closed, serverClosed: server.closed)
            return .close(reason)

        case .closing(let reason, var clientClosed, var serverClosed):
            switch side {
            case .client: clientClosed = true
            case .server: serverClosed = true
            }
            if clientClosed && serverClosed {
                self.state = .done
                return .report(reason)
            }
            self.state = .closing(reason, clientClosed: clientClosed, serverClosed: serverClosed)
            return .none

        case .done:
            return .none
        }
    }

    /// The server connection will never exist (it failed, or was never started): count it closed.
    mutating func serverNeverOpened() -> Action {
        self.channelClosed(.server)
    }

    /// The reason the bridge is ending, once it is.
    var reason: CloseReason? {
        switch self.state {
        case .closing(let reason, _, _): reason
        case .connecting, .forwarding, .done: nil
        }
    }

    private mutating func beginClosing(_ reason: CloseReason) -> Action {
        switch self.state {
        case .connecting:
            self.state = .closing(reason, clientClosed: false, serverClosed: false)
        case .forwarding(let client, let server):
            self.state = .closing(reason, clientClosed: client.closed, serverClosed: server.closed)
        case .closing, .done:
            return .none
        }
        return .close(reason)
    }
}
