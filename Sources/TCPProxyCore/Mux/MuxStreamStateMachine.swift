/// The life of one mux stream at one end of the tunnel, without I/O: the bridge rules of SPEC §2 with the
/// tunnel peer in place of the partner socket.
///
/// The *local* socket is the client at the mux and the server at the demux; the *remote* side is the
/// tunnel peer. EOF travels per direction: local EOF becomes an EOF frame (after the data before it), an
/// EOF frame becomes a write shutdown of the local socket (after the data before it). A reset on either
/// end resets the stream. The stream ends when its local socket is closed; the first reason is reported.
/// One exception: a local socket that closes after both EOFs while bytes it sent still wait for the peer's
/// credit leaves the stream *finishing*, ended at the local end but not at the tunnel's, until those bytes
/// and the EOF frame are sent (completed), or the peer resets, the tunnel drops, or the drain gives up on
/// them.
struct MuxStreamStateMachine {
    /// Which end of the tunnel the stream is at.
    enum Role: Hashable, Sendable {
        /// The local socket is a client; the tunnel peer stands for the server.
        case mux
        /// The local socket is a server; the tunnel peer stands for the client.
        case demux
    }

    /// The last frame to send as the stream ends.
    enum LastFrame: Hashable, Sendable {
        /// Nothing (the stream already ended at the protocol level).
        case none
        /// EOF: the local socket's EOF showed up as its close.
        case eof
        /// RESET with this code.
        case reset(MuxErrorCode)
    }

    /// What the stream must do next.
    enum Action: Hashable, Sendable {
        /// Nothing.
        case none
        /// The stream is open (mux: OPEN can be sent; demux: the server is connected): send what is held,
        /// then an EOF frame if the local socket already ended, and shut down local output if an EOF frame
        /// already arrived.
        case startStream(sendEOF: Bool, shutdownLocalOutput: Bool)
        /// Send an EOF frame after the data held for the tunnel.
        case sendEOF
        /// Write what is held for the local socket, then shut down writing to it (`SHUT_WR`).
        case shutdownLocalOutput
        /// Both halves of the local socket are shut: close it.
        case closeLocal
        /// End the stream: send RESET with this code (if it was opened), close the local socket.
        case reset(MuxErrorCode, CloseReason)
        /// The peer ended the stream (RESET, or the tunnel is gone): close the local socket.
        case abortLocal(CloseReason)
        /// The local socket is closed: send the last frame, and report the stream ended for this reason.
        case report(CloseReason, LastFrame)
        /// The local socket closed after both EOFs, but bytes it sent wait for credit: send them as credit
        /// comes, then the EOF frame, and report ``sentLastBytes()``. Only the drain timer still runs (waiting
        /// for credit is not a stall: the far end judges its own socket).
        case finishSending
    }

    private struct Halves {
        /// The local socket sent EOF.
        var localInputClosed = false
        /// An EOF frame arrived.
        var remoteInputClosed = false
        /// We asked for writing to the local socket to be shut down (after what is held for it).
        var localOutputShutdownRequested = false
        /// Writing to the local socket has been shut down.
        var localOutputClosed = false
    }

    private enum State {
        /// Not open yet (mux: waiting for the tunnel; demux: connecting to the server); EOFs are remembered.
        case connecting(Halves)
        /// Data flows both ways.
        case open(Halves)
        /// Ending for this reason; waiting for the local socket to close.
        case closing(CloseReason)
        /// The local socket is closed after both EOFs; its last bytes and the EOF frame wait for credit.
        case finishing
        /// Reported.
        case done
    }

    let role: Role
    private var state: State = .connecting(Halves())

    init(role: Role) {
        self.role = role
    }

    /// The reason for a reset from the local socket.
    private var localReset: CloseReason { self.role == .mux ? .clientReset : .serverReset }
    /// The reason for a reset from the tunnel peer, or the tunnel dropping.
    private var remoteReset: CloseReason { self.role == .mux ? .serverReset : .clientReset }

    /// What a RESET with `code` from the far end ends this stream as.
    func closeReason(forReset code: MuxErrorCode) -> CloseReason {
        switch code {
        case .connectFailed, .targetNotAllowed, .refusedStream: .connectFailed
        case .connectTimeout: .connectTimeout
        case .stallTimeout: .stallTimeout
        case .idleTimeout: .idleTimeout
        case .drainTimeout: .drainTimeout
        default: self.remoteReset
        }
    }

    var isOpen: Bool {
        if case .open = self.state { return true }
        return false
    }

    var isConnecting: Bool {
        if case .connecting = self.state { return true }
        return false
    }

    /// Whether the local end is over: ending, finishing, or done.
    var isClosing: Bool {
        switch self.state {
        case .closing, .finishing, .done: true
        case .connecting, .open: false
        }
    }

    /// Whether the local socket is gone and the last bytes it sent still wait for credit.
    var isFinishing: Bool {
        if case .finishing = self.state { return true }
        return false
    }

    /// Whether an EOF frame arrived on this stream (after which DATA is a protocol violation).
    var hasRemoteEOF: Bool {
        switch self.state {
        case .connecting(let halves), .open(let halves): halves.remoteInputClosed
        case .finishing: true
        case .closing, .done: false
        }
    }

    /// Whether the local socket may still be read (its input is open and the stream is not ending).
    var localInputOpen: Bool {
        switch self.state {
        case .connecting(let halves), .open(let halves): !halves.localInputClosed
        case .closing, .finishing, .done: false
        }
    }

    /// The stream can carry data: the tunnel is up (mux) or the server is connected (demux).
    mutating func opened() -> Action {
        switch self.state {
        case .connecting(var halves):
            halves.localOutputShutdownRequested = halves.remoteInputClosed
            self.state = .open(halves)
            return .startStream(sendEOF: halves.localInputClosed, shutdownLocalOutput: halves.remoteInputClosed)
        case .closing(let reason):
            // Demux: the stream was reset while connecting; the caller closes the new connection.
            return .abortLocal(reason)
        case .open, .finishing, .done:
            preconditionFailure("opened in \(self.state)")
        }
    }

    /// Demux: the server connection could not be made.
    mutating func connectFailed(timedOut: Bool) -> Action {
        guard case .connecting = self.state else { return .none }
        let reason: CloseReason = timedOut ? .connectTimeout : .connectFailed
        self.state = .closing(reason)
        return .reset(MuxErrorCode(reason), reason)
    }

    /// The local socket sent EOF.
    mutating func localInputClosed() -> Action {
        switch self.state {
        case .connecting(var halves):
            halves.localInputClosed = true
            self.state = .connecting(halves)
            return .none
        case .open(var halves):
            guard !halves.localInputClosed else { return .none }
            halves.localInputClosed = true
            self.state = .open(halves)
            return .sendEOF
        case .closing, .finishing, .done:
            return .none
        }
    }

    /// An EOF frame arrived.
    mutating func remoteInputClosed() -> Action {
        switch self.state {
        case .connecting(var halves):
            halves.remoteInputClosed = true
            self.state = .connecting(halves)
            return .none
        case .open(var halves):
            guard !halves.remoteInputClosed else { return .none }
            halves.remoteInputClosed = true
            halves.localOutputShutdownRequested = true
            self.state = .open(halves)
            return .shutdownLocalOutput
        case .closing, .finishing, .done:
            return .none
        }
    }

    /// Writing to the local socket has been shut down, after everything held for it was written.
    mutating func localOutputClosed() -> Action {
        guard case .open(var halves) = self.state else { return .none }
        halves.localOutputClosed = true
        self.state = .open(halves)
        return halves.localInputClosed ? .closeLocal : .none
    }

    /// Reading from, or writing to, the local socket failed.
    mutating func localError() -> Action {
        switch self.state {
        case .connecting, .open:
            self.state = .closing(self.localReset)
            return .reset(.connectionReset, self.localReset)
        case .closing, .finishing, .done:
            return .none
        }
    }

    /// A timeout fired or the drain ran out: end the stream for `reason`.
    mutating func abort(_ reason: CloseReason) -> Action {
        switch self.state {
        case .connecting, .open:
            self.state = .closing(reason)
            return .reset(MuxErrorCode(reason), reason)
        case .finishing:
            // The local socket is gone: only the far end is left to tell.
            self.state = .done
            return .report(reason, .reset(MuxErrorCode(reason)))
        case .closing, .done:
            return .none
        }
    }

    /// A RESET frame arrived.
    mutating func remoteReset(_ code: MuxErrorCode) -> Action {
        switch self.state {
        case .connecting, .open:
            let reason = self.closeReason(forReset: code)
            self.state = .closing(reason)
            return .abortLocal(reason)
        case .finishing:
            // The far end will give no more credit: the held bytes are lost.
            self.state = .done
            return .report(self.closeReason(forReset: code), .none)
        case .closing, .done:
            return .none
        }
    }

    /// The tunnel carrying an open stream closed.
    mutating func tunnelClosed() -> Action {
        switch self.state {
        case .connecting, .open:
            self.state = .closing(self.remoteReset)
            return .abortLocal(self.remoteReset)
        case .finishing:
            self.state = .done
            return .report(self.remoteReset, .none)
        case .closing, .done:
            return .none
        }
    }

    /// Finishing: the held bytes and the EOF frame after them are sent.
    mutating func sentLastBytes() -> Action {
        guard case .finishing = self.state else { return .none }
        self.state = .done
        return .report(.completed, .none)
    }

    /// The local socket is closed (or, at the demux, will never exist).
    /// - Parameter holdingBytes: bytes the local socket sent still wait for credit (only the EOF frame, if
    ///   one is due, can follow them).
    mutating func localClosed(holdingBytes: Bool) -> Action {
        switch self.state {
        case .connecting:
            // Mux: the client left before the tunnel was up; nothing was sent about it.
            self.state = .done
            return .report(self.localReset, .none)
        case .open(var halves):
            self.state = .done
            var sendEOF = false
            if !halves.localInputClosed && halves.localOutputShutdownRequested {
                // NIO reports the peer's EOF as a plain close when our write side was already shut (a read
                // error would have come first): it is that EOF.
                halves.localInputClosed = true
                sendEOF = true
            }
            if halves.localInputClosed && halves.remoteInputClosed {
                if holdingBytes {
                    self.state = .finishing
                    return .finishSending
                }
                return .report(.completed, sendEOF ? .eof : .none)
            }
            // Closed while a direction was still open: the local peer went away.
            return .report(self.localReset, .reset(.connectionReset))
        case .closing(let reason):
            self.state = .done
            return .report(reason, .none)
        case .finishing, .done:
            return .none
        }
    }
}
