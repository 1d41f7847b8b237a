import NIOCore
import Testing

@testable import TCPProxyCore

@Suite("PROXY protocol header")
struct ProxyHeaderTests {
    private let v4 = ProxyHeader(
        source: try! SocketAddress(ipAddress: "192.0.2.1", port: 56324),
        destination: try! SocketAddress(ipAddress: "198.51.100.7", port: 443)
    )
    private let v6 = ProxyHeader(
        source: try! SocketAddress(ipAddress: "2001:db8::1", port: 1234),
        destination: try! SocketAddress(ipAddress: "2001:db8::2", port: 80)
    )

    @Test("v1 text for TCP4, TCP6 and UNKNOWN")
    func v1Write() {
        #expect(self.v4.v1Text == "PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n")
        #expect(self.v6.v1Text == "PROXY TCP6 2001:db8::1 2001:db8::2 1234 80\r\n")
        #expect(ProxyHeader(addresses: .unknown).v1Text == "PROXY UNKNOWN\r\n")
    }

    @Test("the specification's v1 examples parse, including the 107-byte worst case")
    func v1SpecificationExamples() throws {
        let longest = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
        #expect(longest.utf8.count == 104)
        var buffer = ByteBuffer(string: longest + "payload")
        let header = try #require(try buffer.readProxyHeader())
        #expect(header.source?.port == 65535)
        #expect(String(buffer: buffer) == "payload", "the payload after the header is left in place")

        var maxV4 = ByteBuffer(string: "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n")
        #expect(try maxV4.readProxyHeader()?.destination?.ipAddress == "255.255.255.255")

        let unknownLongest = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
        #expect(unknownLongest.utf8.count == 107)
        var unknown = ByteBuffer(string: unknownLongest)
        #expect(try unknown.readProxyHeader() == ProxyHeader(addresses: .unknown))

        // Whatever follows UNKNOWN is ignored, bytes that are not printable ASCII included.
        var unknownBinary = ByteBuffer(bytes: Array("PROXY UNKNOWN ".utf8) + [0xFF, 0x00, 0x7F] + Array("\r\npayload".utf8))
        #expect(try unknownBinary.readProxyHeader() == ProxyHeader(addresses: .unknown))
        #expect(String(buffer: unknownBinary) == "payload")
        var notUnknown = ByteBuffer(bytes: Array("PROXY UNKNOWNX".utf8) + [0xFF] + Array("\r\n".utf8))
        #expect(throws: ProxyHeaderError.self) { try notUnknown.readProxyHeader() }
    }

    @Test("v2 bytes for TCP over IPv4, exactly")
    func v2WriteV4() {
        var buffer = ByteBuffer()
        buffer.writeProxyHeaderV2(self.v4)
        let expected: [UInt8] =
            ProxyHeader.v2Signature + [0x21, 0x11, 0x00, 0x0C]
            + [192, 0, 2, 1] + [198, 51, 100, 7] + [0xDC, 0x04] + [0x01, 0xBB]
        #expect(Array(buffer.readableBytesView) == expected)
    }

    @Test("v2 round-trips IPv4, IPv6 and LOCAL; TLVs are skipped")
    func v2RoundTrip() throws {
        for header in [self.v4, self.v6, ProxyHeader(addresses: .unknown)] {
            var buffer = ByteBuffer()
            buffer.writeProxyHeaderV2(header)
            buffer.writeString("rest")
            #expect(try buffer.readProxyHeader() == header)
            #expect(String(buffer: buffer) == "rest")
        }
        // IPv4 with a 7-byte TLV (type 0x04 NOOP) after the addresses.
        var withTLV = ByteBuffer(bytes: ProxyHeader.v2Signature + [0x21, 0x11, 0x00, 12 + 7])
        withTLV.writeBytes([10, 0, 0, 1, 10, 0, 0, 2, 0x00, 0x50, 0x01, 0xBB, 0x04, 0x00, 0x04, 1, 2, 3, 4])
        let parsed = try #require(try withTLV.readProxyHeader())
        #expect(parsed.source == (try SocketAddress(ipAddress: "10.0.0.1", port: 80)))
        #expect(withTLV.readableBytes == 0)
    }

    @Test("every prefix of a valid header asks for more; fed byte by byte it parses once")
    func incremental() throws {
        var full = ByteBuffer()
        full.writeProxyHeaderV2(self.v6)
        let v1 = ByteBuffer(string: self.v4.v1Text)
        for whole in [full, v1] {
            var partial = ByteBuffer()
            var parsed: ProxyHeader?
            for byte in whole.readableBytesView {
                #expect(parsed == nil)
                partial.writeInteger(byte)
                let before = partial.readerIndex
                parsed = try partial.readProxyHeader()
                if parsed == nil { #expect(partial.readerIndex == before, "no bytes consumed while incomplete") }
            }
            #expect(parsed != nil)
        }
    }

    static let malformed: [(String, [UInt8])] = [
        ("not a header", Array("GET / HTTP/1.1\r\n".utf8)),
        ("lowercase prefix", Array("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n".utf8)),
        ("bad protocol", Array("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n".utf8)),
        ("missing field", Array("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n".utf8)),
        ("IPv6 under TCP4", Array("PROXY TCP4 ::1 ::1 1 2\r\n".utf8)),
        ("IPv4 under TCP6", Array("PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n".utf8)),
        ("IPv6 zone (this host's interface)", Array("PROXY TCP6 fe80::1%lo ::1 1 2\r\n".utf8)),
        ("IPv6 zone by number", Array("PROXY TCP6 ::1 fe80::1%1 1 2\r\n".utf8)),
        ("port too big", Array("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n".utf8)),
        ("leading zero port", Array("PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n".utf8)),
        ("double space", Array("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n".utf8)),
        ("bare LF", Array("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".utf8)),
        ("v1 without end", Array(("PROXY TCP4 " + String(repeating: "9", count: 120)).utf8)),
        ("v2 version 1", ProxyHeader.v2Signature + [0x11, 0x11, 0x00, 0x0C]),
        ("v2 command 2", ProxyHeader.v2Signature + [0x22, 0x11, 0x00, 0x0C]),
        ("v2 short IPv4", ProxyHeader.v2Signature + [0x21, 0x11, 0x00, 0x04, 1, 2, 3, 4]),
        ("v2 short IPv6", ProxyHeader.v2Signature + [0x21, 0x21, 0x00, 0x0C] + Array(repeating: 0, count: 12)),
        ("v2 bad family", ProxyHeader.v2Signature + [0x21, 0x51, 0x00, 0x00]),
        ("v2 too long", ProxyHeader.v2Signature + [0x21, 0x11, 0xFF, 0xFF]),
        ("v2 TLV past the end", ProxyHeader.v2Signature + [0x21, 0x11, 0x00, 0x11] + [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2] + [0x01, 0x00, 0x09, 0x61, 0x62]),
        ("v2 lone TLV byte", ProxyHeader.v2Signature + [0x21, 0x11, 0x00, 0x0D] + [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2] + [0x04]),
        ("v2 bad signature", [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0B, 0x21, 0x11, 0, 0]),
    ]

    @Test("malformed headers are refused, never waited on", arguments: malformed)
    func refused(name: String, bytes: [UInt8]) {
        var buffer = ByteBuffer(bytes: bytes)
        #expect(throws: ProxyHeaderError.self, "\(name)") { _ = try buffer.readProxyHeader() }
    }

    @Test("random bytes and mutations of valid headers never crash, hang, or read past their bounds")
    func fuzz() {
        var random = RandomSource(seed: 2026)
        var valid = ByteBuffer()
        valid.writeProxyHeaderV2(self.v6)
        let seeds = [Array(valid.readableBytesView), Array(self.v4.v1Text.utf8), Array(self.v6.v1Text.utf8)]
        for iteration in 0..<20_000 {
            var bytes: [UInt8]
            if iteration % 2 == 0 {
                bytes = (0..<Int.random(in: 0...200, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
            } else {
                bytes = seeds[iteration % 3]
                for _ in 0..<Int.random(in: 1...4, using: &random) {
                    bytes[Int.random(in: 0..<bytes.count, using: &random)] = UInt8.random(in: 0...255, using: &random)
                }
            }
            var buffer = ByteBuffer(bytes: bytes)
            let before = buffer.readerIndex
            if let header = try? buffer.readProxyHeader() {
                _ = header
                #expect(buffer.readerIndex > before && buffer.readerIndex <= before + 16 + ProxyHeader.v2MaximumPayload)
            } else {
                #expect(buffer.readerIndex == before)
            }
        }
    }
}
