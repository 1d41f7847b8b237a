import NIOCore

/// PROXY protocol version 1: `PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n` (at most 107 bytes).
extension ProxyHeader {
    /// The longest v1 line the specification allows, CRLF included.
    static let v1MaximumLength = 107

    /// The v1 text of this header.
    public var v1Text: String {
        switch self.addresses {
        case .tcp(let source, let destination):
            let family = source.protocol == .inet ? "TCP4" : "TCP6"
            return "PROXY \(family) \(source.ipAddress!) \(destination.ipAddress!) \(source.port!) \(destination.port!)\r\n"
        case .unknown:
            return "PROXY UNKNOWN\r\n"
        }
    }
}

extension ByteBuffer {
    /// Writes a PROXY v1 header.
    @discardableResult
    public mutating func writeProxyHeaderV1(_ header: ProxyHeader) -> Int {
        self.writeString(header.v1Text)
    }

    /// Reads a PROXY v1 header. Returns `nil` until the whole line has arrived; throws as soon as the
    /// bytes can never be a valid header (including a line that grows past 107 bytes without a CRLF).
    /// The reader index moves only when a header is returned.
    mutating func readProxyHeaderV1() throws -> ProxyHeader? {
        let view = self.readableBytesView
        let limit = min(view.count, ProxyHeader.v1MaximumLength)
        guard let lf = view.prefix(limit).firstIndex(of: UInt8(ascii: "\n")) else {
            if view.count >= ProxyHeader.v1MaximumLength { throw ProxyHeaderError.tooLong(view.count) }
            return nil
        }
        let lineLength = lf - view.startIndex + 1
        guard lineLength >= 2, view[lf - 1] == UInt8(ascii: "\r") else {
            throw ProxyHeaderError.malformedV1("line does not end in CRLF")
        }
        // The spec has the receiver ignore whatever follows "PROXY UNKNOWN", up to the CRLF.
        let unknownPrefix = "PROXY UNKNOWN".utf8
        let isUnknown =
            view.starts(with: unknownPrefix) && (lineLength - 2 == unknownPrefix.count || view[view.startIndex + unknownPrefix.count] == UInt8(ascii: " "))
        let checked = isUnknown ? unknownPrefix.count : lineLength - 2
        guard let line = self.getString(at: self.readerIndex, length: checked),
            line.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7f })
        else {
            throw ProxyHeaderError.malformedV1("not printable ASCII")
        }
        let header = try ProxyHeader(v1Line: line)
        self.moveReaderIndex(forwardBy: lineLength)
        return header
    }
}

extension ProxyHeader {
    /// Parses a v1 line without its CRLF.
    init(v1Line line: String) throws {
        let fields = line.split(separator: " ", omittingEmptySubsequences: false)
        guard fields.first == "PROXY", fields.count >= 2 else { throw ProxyHeaderError.malformedV1("no PROXY prefix") }
        switch fields[1] {
        case "UNKNOWN":
            // The rest of an UNKNOWN line is to be ignored.
            self.init(addresses: .unknown)
        case "TCP4", "TCP6":
            guard fields.count == 6 else { throw ProxyHeaderError.malformedV1("expected 6 fields, got \(fields.count)") }
            let isV4 = fields[1] == "TCP4"
            func port(_ text: Substring) throws -> Int {
                guard !text.isEmpty, text.count <= 5, text.allSatisfy({ $0.isASCII && $0.isNumber }),
                    text == "0" || text.first != "0", let value = Int(text), value <= 65535
                else { throw ProxyHeaderError.malformedV1("bad port '\(text)'") }
                return value
            }
            func address(_ text: Substring, port: Int) throws -> SocketAddress {
                // Plain inet_pton text, as the protocol's spec says: no IPv6 zone (`%eth0`), which would
                // name an interface of this host rather than describe the client.
                guard isV4 ? !text.contains(":") : text.contains(":"), !text.contains("%"),
                    let address = try? SocketAddress(ipAddress: String(text), port: port)
                else { throw ProxyHeaderError.malformedV1("bad address '\(text)'") }
                return address
            }
            let source = try address(fields[2], port: try port(fields[4]))
            let destination = try address(fields[3], port: try port(fields[5]))
            self.init(addresses: .tcp(source: source, destination: destination))
        default:
            throw ProxyHeaderError.malformedV1("unknown protocol '\(fields[1])'")
        }
    }
}
