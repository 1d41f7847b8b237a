import NIOCore

extension ByteBuffer {
    /// Runs `body` on this buffer and, unless it returns a value, puts the reader index back where it was.
    ///
    /// The shape of every SOCKS parser (as in NIOSOCKS): `nil` while bytes are missing, a throw when they
    /// can never be valid, and in both cases the buffer unchanged, so the caller can retry with more bytes or
    /// reply and close.
    mutating func parseSOCKSUnwindingIfNeeded<T>(_ body: (inout ByteBuffer) throws -> T?) rethrows -> T? {
        let saved = self.readerIndex
        do {
            guard let result = try body(&self) else {
                self.moveReaderIndex(to: saved)
                return nil
            }
            return result
        } catch {
            self.moveReaderIndex(to: saved)
            throw error
        }
    }

    /// Reads bytes up to a NUL and the NUL itself (SOCKS4 `USERID`, SOCKS4a host name).
    ///
    /// - Parameters:
    ///   - maximumLength: the most bytes before the NUL.
    ///   - tooLong: the error to throw once `maximumLength` bytes have arrived with no NUL among them.
    /// - Returns: the bytes before the NUL, or `nil` while the NUL has not arrived (and fewer than
    ///   `maximumLength + 1` bytes are waiting, so a field that never ends cannot grow memory).
    mutating func readSOCKSNULTerminatedBytes(maximumLength: Int, tooLong: SOCKSError) throws -> [UInt8]? {
        let window = self.readableBytesView.prefix(maximumLength + 1)
        guard let end = window.firstIndex(of: 0) else {
            if window.count > maximumLength { throw tooLong }
            return nil
        }
        let bytes = self.readBytes(length: end - self.readerIndex)
        self.moveReaderIndex(forwardBy: 1)
        return bytes
    }

    /// Reads a big-endian port.
    mutating func readSOCKSPort() -> Int? {
        self.readInteger(as: UInt16.self).map(Int.init)
    }

    /// Writes the 4 or 16 address bytes of `address`.
    @discardableResult
    mutating func writeSOCKSAddressBytes(_ address: SocketAddress) -> Int {
        switch address {
        case .v4(let v4): withUnsafeBytes(of: v4.address.sin_addr) { self.writeBytes($0) }
        case .v6(let v6): withUnsafeBytes(of: v6.address.sin6_addr) { self.writeBytes($0) }
        case .unixDomainSocket: 0
        }
    }
}
