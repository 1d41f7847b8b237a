import NIOCore

/// PROXY protocol version 2: a 16-byte binary prefix (signature, version and command, family, length)
/// followed by the addresses and optional TLVs.
extension ProxyHeader {
    /// `\r\n\r\n\0\r\nQUIT\n`.
    static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    /// The most bytes after the 16-byte prefix we accept (addresses plus TLVs); a longer header is refused
    /// rather than buffered.
    static let v2MaximumPayload = 512
}

extension ByteBuffer {
    /// Writes a PROXY v2 header: command PROXY with TCP over IPv4 or IPv6, or LOCAL for `unknown`.
    @discardableResult
    public mutating func writeProxyHeaderV2(_ header: ProxyHeader) -> Int {
        var written = self.writeBytes(ProxyHeader.v2Signature)
        switch header.addresses {
        case .tcp(.v4(let source), .v4(let destination)):
            written += self.writeInteger(UInt8(0x21))  // version 2, PROXY
            written += self.writeInteger(UInt8(0x11))  // AF_INET, STREAM
            written += self.writeInteger(UInt16(12))
            written += withUnsafeBytes(of: source.address.sin_addr) { self.writeBytes($0) }
            written += withUnsafeBytes(of: destination.address.sin_addr) { self.writeBytes($0) }
            written += self.writeInteger(UInt16(UInt16(bigEndian: source.address.sin_port)))
            written += self.writeInteger(UInt16(UInt16(bigEndian: destination.address.sin_port)))
        case .tcp(.v6(let source), .v6(let destination)):
            written += self.writeInteger(UInt8(0x21))
            written += self.writeInteger(UInt8(0x21))  // AF_INET6, STREAM
            written += self.writeInteger(UInt16(36))
            written += withUnsafeBytes(of: source.address.sin6_addr) { self.writeBytes($0) }
            written += withUnsafeBytes(of: destination.address.sin6_addr) { self.writeBytes($0) }
            written += self.writeInteger(UInt16(UInt16(bigEndian: source.address.sin6_port)))
            written += self.writeInteger(UInt16(UInt16(bigEndian: destination.address.sin6_port)))
        default:
            written += self.writeInteger(UInt8(0x20))  // version 2, LOCAL
            written += self.writeInteger(UInt8(0x00))  // UNSPEC
            written += self.writeInteger(UInt16(0))
        }
        return written
    }

    /// Reads a PROXY v2 header. Returns `nil` until it has fully arrived; throws as soon as it can never
    /// be valid. TLVs after TCP addresses are checked for their bounds (each a type, a 2-byte length and
    /// that many bytes inside the header, as HAProxy checks them) and skipped. The reader index moves only
    /// when a header is returned.
    mutating func readProxyHeaderV2() throws -> ProxyHeader? {
        guard self.readableBytes >= 16 else {
            let present = self.readableBytesView.prefix(12)
            guard present.elementsEqual(ProxyHeader.v2Signature.prefix(present.count)) else {
                throw ProxyHeaderError.notAProxyHeader
            }
            return nil
        }
        guard self.readableBytesView.prefix(12).elementsEqual(ProxyHeader.v2Signature) else {
            throw ProxyHeaderError.notAProxyHeader
        }
        let versionCommand = self.getInteger(at: self.readerIndex + 12, as: UInt8.self)!
        let family = self.getInteger(at: self.readerIndex + 13, as: UInt8.self)!
        let length = Int(self.getInteger(at: self.readerIndex + 14, as: UInt16.self)!)
        guard versionCommand >> 4 == 2 else { throw ProxyHeaderError.malformedV2("version \(versionCommand >> 4)") }
        let command = versionCommand & 0x0F
        guard command <= 1 else { throw ProxyHeaderError.malformedV2("command \(command)") }
        guard length <= ProxyHeader.v2MaximumPayload else { throw ProxyHeaderError.tooLong(16 + length) }
        guard self.readableBytes >= 16 + length else { return nil }

        let payload = self.readerIndex + 16
        var header = ProxyHeader(addresses: .unknown)
        if command == 1 {
            switch family {
            case 0x11:  // TCP over IPv4
                guard length >= 12 else { throw ProxyHeaderError.malformedV2("IPv4 addresses need 12 bytes, got \(length)") }
                let source = try SocketAddress(
                    packedIPAddress: self.getSlice(at: payload, length: 4)!,
                    port: Int(self.getInteger(at: payload + 8, as: UInt16.self)!)
                )
                let destination = try SocketAddress(
                    packedIPAddress: self.getSlice(at: payload + 4, length: 4)!,
                    port: Int(self.getInteger(at: payload + 10, as: UInt16.self)!)
                )
                try self.checkTLVs(from: payload + 12, to: payload + length)
                header = ProxyHeader(addresses: .tcp(source: source, destination: destination))
            case 0x21:  // TCP over IPv6
                guard length >= 36 else { throw ProxyHeaderError.malformedV2("IPv6 addresses need 36 bytes, got \(length)") }
                let source = try SocketAddress(
                    packedIPAddress: self.getSlice(at: payload, length: 16)!,
                    port: Int(self.getInteger(at: payload + 32, as: UInt16.self)!)
                )
                let destination = try SocketAddress(
                    packedIPAddress: self.getSlice(at: payload + 16, length: 16)!,
                    port: Int(self.getInteger(at: payload + 34, as: UInt16.self)!)
                )
                try self.checkTLVs(from: payload + 36, to: payload + length)
                header = ProxyHeader(addresses: .tcp(source: source, destination: destination))
            case 0x00, 0x12, 0x22, 0x31, 0x32:
                // UNSPEC, UDP or UNIX: nothing we forward by; use the connection's own addresses.
                break
            default:
                throw ProxyHeaderError.malformedV2("family 0x\(String(family, radix: 16))")
            }
        }
        self.moveReaderIndex(forwardBy: 16 + length)
        return header
    }

    /// Throws unless the bytes from `start` to `end` are whole TLVs.
    private func checkTLVs(from start: Int, to end: Int) throws {
        var index = start
        while index < end {
            guard end - index >= 3, let valueLength = self.getInteger(at: index + 1, as: UInt16.self),
                index + 3 + Int(valueLength) <= end
            else { throw ProxyHeaderError.malformedV2("a TLV runs past the header's end") }
            index += 3 + Int(valueLength)
        }
    }

    /// Reads a PROXY header of either version, telling them apart by their first byte.
    public mutating func readProxyHeader() throws -> ProxyHeader? {
        guard let first = self.readableBytesView.first else { return nil }
        switch first {
        case UInt8(ascii: "P"):
            let prefix = Array("PROXY ".utf8)
            let present = self.readableBytesView.prefix(prefix.count)
            guard present.elementsEqual(prefix.prefix(present.count)) else { throw ProxyHeaderError.notAProxyHeader }
            return try self.readProxyHeaderV1()
        case ProxyHeader.v2Signature[0]:
            return try self.readProxyHeaderV2()
        default:
            throw ProxyHeaderError.notAProxyHeader
        }
    }
}
