/// The credit-based flow control of one stream, both directions, without I/O (like HTTP/2's windows).
///
/// Sending: the peer grants credit; DATA may be sent only while credit is left. Receiving: the peer may
/// send at most the credit we granted; credit is granted back (a WINDOW_UPDATE) only as the bytes are
/// written out to the local socket, so a local peer that stops reading stops the remote sender, and only
/// that stream's sender.
struct MuxWindow: Hashable, Sendable {
    /// Bytes we may still send.
    private(set) var sendCredit: Int
    /// Bytes the peer may still send us.
    private(set) var receiveCredit: Int
    /// Bytes received and written out locally, not yet granted back.
    private(set) var unacknowledged = 0
    /// How many bytes we let the peer send ahead (`--window`).
    let receiveWindow: Int
    /// The credit each direction started with.
    let initialCredit: Int

    /// - Parameters:
    ///   - receiveWindow: how many bytes the peer may send ahead of what we write out (`--window`). The
    ///     stream's first frames must raise the peer's credit to it: ``announcement``.
    ///   - initialCredit: the credit each direction starts with (the protocol's, ``MuxFrame/initialCredit``).
    init(receiveWindow: Int = MuxFrame.defaultInitialWindow, initialCredit: Int = MuxFrame.initialCredit) {
        self.receiveWindow = max(receiveWindow, initialCredit)
        self.initialCredit = initialCredit
        self.sendCredit = initialCredit
        self.receiveCredit = self.receiveWindow
    }

    /// The WINDOW_UPDATE increment that raises the peer's credit from the initial one to our window, sent
    /// when the stream starts (`nil`: the window is the initial credit).
    var announcement: UInt32? {
        self.receiveWindow > self.initialCredit ? UInt32(self.receiveWindow - self.initialCredit) : nil
    }

    /// `count` bytes were sent as DATA; the caller sent no more than ``sendCredit``.
    mutating func sent(_ count: Int) {
        precondition(count <= self.sendCredit, "sent \(count) with \(self.sendCredit) credit")
        self.sendCredit -= count
    }

    /// The peer granted `increment` more bytes.
    /// - Throws: ``MuxProtocolError/badWindowIncrement(_:)`` if the credit would pass 2^31 - 1.
    mutating func granted(_ increment: UInt32) throws {
        let credit = self.sendCredit + Int(increment)
        guard increment > 0, credit <= MuxFrame.maximumWindow else { throw MuxProtocolError.badWindowIncrement(increment) }
        self.sendCredit = credit
    }

    /// The peer sent `count` bytes of DATA.
    /// - Throws: ``MuxProtocolError/streamViolation(_:)`` if that is more than the credit it had.
    mutating func received(_ count: Int) throws {
        guard count <= self.receiveCredit else {
            throw MuxProtocolError.streamViolation("flow control: \(count) bytes received with \(self.receiveCredit) credit")
        }
        self.receiveCredit -= count
    }

    /// `count` received bytes were written out to the local socket.
    /// - Returns: the WINDOW_UPDATE increment to send now, or `nil` to wait for more: credit goes back in
    ///   steps of a quarter window, so updates cost little and the sender never runs dry on a fast stream.
    mutating func delivered(_ count: Int) -> UInt32? {
        self.unacknowledged += count
        guard self.unacknowledged >= max(1, self.receiveWindow / 4) else { return nil }
        let increment = self.unacknowledged
        self.unacknowledged = 0
        self.receiveCredit += increment
        return UInt32(increment)
    }
}
