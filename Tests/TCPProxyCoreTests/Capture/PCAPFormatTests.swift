import NIOCore
import Testing

@testable import TCPProxyCore

@Suite("Capture: pcap format")
struct CapturePCAPFormatTests {
    /// 10.0.0.1:40000.
    private let client = CaptureEndpoint(address: .v4(0x0A00_0001), port: 40000)
    /// 192.168.1.2:80.
    private let server = CaptureEndpoint(address: .v4(0xC0A8_0102), port: 80)
    private let timestamp = PCAPTimestamp(seconds: 0x6500_0000, microseconds: 123_456)

    @Test("the global header is pcap 2.4, little-endian, snaplen 65535, LINKTYPE_RAW")
    func globalHeader() {
        var buffer = ByteBuffer()
        #expect(buffer.writePCAPGlobalHeader() == 24)
        #expect(
            Array(buffer.readableBytesView) == [
                0xD4, 0xC3, 0xB2, 0xA1,  // magic 0xa1b2c3d4, little-endian
                0x02, 0x00, 0x04, 0x00,  // version 2.4
                0x00, 0x00, 0x00, 0x00,  // thiszone
                0x00, 0x00, 0x00, 0x00,  // sigfigs
                0xFF, 0xFF, 0x00, 0x00,  // snaplen 65535
                0x65, 0x00, 0x00, 0x00,  // LINKTYPE_RAW (101)
            ]
        )
    }

    @Test("an IPv4 SYN record is byte-exact, with both checksums correct")
    func ipv4SYN() throws {
        var buffer = ByteBuffer()
        let segment = TCPSegment(
            source: self.client,
            destination: self.server,
            sequenceNumber: 1000,
            acknowledgmentNumber: 0,
            flags: .syn
        )
        let written = buffer.writePCAPRecord(timestamp: self.timestamp, segment: segment)
        #expect(written == 16 + 40)
        #expect(written == PCAPFormat.recordSize(payloadLength: 0, ipv4: true))
        let bytes = Array(buffer.readableBytesView)
        // Record header: seconds, microseconds, included and original length, little-endian.
        #expect(Array(bytes[0..<16]) == [0x00, 0x00, 0x00, 0x65, 0x40, 0xE2, 0x01, 0x00, 40, 0, 0, 0, 40, 0, 0, 0])
        let packet = Array(bytes[16...])
        // Expected checksums computed independently (Python, RFC 1071).
        #expect(
            packet == [
                0x45, 0x00, 0x00, 0x28, 0x00, 0x00, 0x40, 0x00, 0x40, 0x06, 0x6F, 0x25,  // IPv4, DF, TTL 64, TCP
                10, 0, 0, 1, 192, 168, 1, 2,  // addresses
                0x9C, 0x40, 0x00, 0x50,  // ports 40000 → 80
                0x00, 0x00, 0x03, 0xE8, 0x00, 0x00, 0x00, 0x00,  // seq 1000, ack 0
                0x50, 0x02, 0xFF, 0xFF, 0x43, 0xBF, 0x00, 0x00,  // offset 5, SYN, window, checksum, urgent
            ]
        )
        // Recomputing over the header with its checksum in place gives 0.
        #expect(referenceChecksum(Array(packet[0..<20])) == 0)
        let parsed = try #require(try PCAPTestReader.packets(in: Self.header + bytes).first)
        #expect(referenceChecksum(pseudoHeaderAndSegment(parsed)) == 0)
    }

    @Test("an IPv4 data record carries the payload, an odd length included, with a correct TCP checksum")
    func ipv4Data() throws {
        var buffer = ByteBuffer()
        let payload = ByteBuffer(string: "hello, capture")  // 14 bytes
        var odd = payload
        odd.moveWriterIndex(to: 13)
        for body in [payload, odd] {
            buffer.clear()
            let segment = TCPSegment(
                source: self.server,
                destination: self.client,
                sequenceNumber: 0xFFFF_FFF0,
                acknowledgmentNumber: 77,
                flags: [.psh, .ack]
            )
            buffer.writePCAPRecord(timestamp: self.timestamp, segment: segment, payload: body)
            let parsed = try #require(
                try PCAPTestReader.packets(in: Self.header + Array(buffer.readableBytesView)).first
            )
            #expect(parsed.includedLength == 40 + body.readableBytes)
            #expect(parsed.originalLength == parsed.includedLength)
            #expect(big16(parsed.packet, 2) == UInt16(40 + body.readableBytes))  // IPv4 total length
            #expect(parsed.sourceAddress == [192, 168, 1, 2])
            #expect(parsed.sourcePort == 80 && parsed.destinationPort == 40000)
            #expect(parsed.sequenceNumber == 0xFFFF_FFF0 && parsed.acknowledgmentNumber == 77)
            #expect(parsed.flags == 0x18)
            #expect(parsed.payload == Array(body.readableBytesView))
            #expect(referenceChecksum(Array(parsed.packet[0..<20])) == 0)
            #expect(referenceChecksum(pseudoHeaderAndSegment(parsed)) == 0)
        }
    }

    @Test("an IPv6 record has the IPv6 layout and a correct TCP checksum")
    func ipv6Layout() throws {
        // 2001:db8::1 port 5000 → 2001:db8::2 port 443.
        let source = CaptureEndpoint(address: .v6(high: 0x2001_0DB8_0000_0000, low: 1), port: 5000)
        let destination = CaptureEndpoint(address: .v6(high: 0x2001_0DB8_0000_0000, low: 2), port: 443)
        let segment = TCPSegment(
            source: source,
            destination: destination,
            sequenceNumber: 7,
            acknowledgmentNumber: 9,
            flags: [.psh, .ack]
        )
        var buffer = ByteBuffer()
        let written = buffer.writePCAPRecord(
            timestamp: self.timestamp,
            segment: segment,
            payload: ByteBuffer(string: "hi!")
        )
        #expect(written == 16 + 40 + 20 + 3)
        let packet = Array(buffer.readableBytesView.dropFirst(16))
        #expect(Array(packet[0..<8]) == [0x60, 0, 0, 0, 0x00, 23, 6, 64])  // version 6, payload 23, TCP, hops 64
        #expect(Array(packet[8..<24]) == [0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
        #expect(Array(packet[24..<40]) == [0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2])
        #expect(
            Array(packet[40...]) == [
                0x13, 0x88, 0x01, 0xBB, 0, 0, 0, 7, 0, 0, 0, 9,
                0x50, 0x18, 0xFF, 0xFF, 0xB5, 0x98, 0x00, 0x00,  // checksum from Python
                UInt8(ascii: "h"), UInt8(ascii: "i"), UInt8(ascii: "!"),
            ]
        )
    }

    @Test("an IPv4 end talking to an IPv6 end is written as IPv6 with ::ffff:a.b.c.d")
    func mixedFamilies() throws {
        let segment = TCPSegment(
            source: self.client,
            destination: CaptureEndpoint(address: .v6(high: 0, low: 1), port: 80),
            sequenceNumber: 1,
            acknowledgmentNumber: 0,
            flags: .syn
        )
        var buffer = ByteBuffer()
        buffer.writePCAPRecord(timestamp: self.timestamp, segment: segment)
        let parsed = try #require(try PCAPTestReader.packets(in: Self.header + Array(buffer.readableBytesView)).first)
        #expect(parsed.ipVersion == 6)
        #expect(parsed.sourceAddress == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 10, 0, 0, 1])
        #expect(parsed.destinationAddress == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
        #expect(referenceChecksum(pseudoHeaderAndSegment(parsed)) == 0)
    }

    @Test("socket addresses become capture endpoints in network order")
    func endpointsFromSocketAddresses() throws {
        let v4 = CaptureEndpoint(try SocketAddress(ipAddress: "192.168.1.2", port: 8080))
        #expect(v4 == CaptureEndpoint(address: .v4(0xC0A8_0102), port: 8080))
        let v6 = CaptureEndpoint(try SocketAddress(ipAddress: "2001:db8::ff00:42:8329", port: 443))
        #expect(v6 == CaptureEndpoint(address: .v6(high: 0x2001_0DB8_0000_0000, low: 0x0000_FF00_0042_8329), port: 443))
    }

    @Test("the checksum of a large payload matches a byte-at-a-time reference")
    func checksumAgreesWithReference() {
        let bytes = (0..<65_475).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        for count in [0, 1, 2, 3, 4, 5, 1001, 65_475] {
            let prefix = Array(bytes[0..<count])
            let sum = prefix.withUnsafeBytes { InternetChecksum.add($0, to: 0) }
            #expect(InternetChecksum.finish(sum) == referenceChecksum(prefix), "\(count) bytes")
        }
    }

    /// A file header, so a record alone can be read with ``PCAPTestReader``.
    private static var header: [UInt8] {
        var buffer = ByteBuffer()
        buffer.writePCAPGlobalHeader()
        return Array(buffer.readableBytesView)
    }
}
