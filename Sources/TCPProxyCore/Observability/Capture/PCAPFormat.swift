import NIOCore

/// The classic pcap file format (tcpdump's `pcap-savefile(5)`) with raw IP packets: sizes and constants.
///
/// Every field of the file is written little-endian, magic included, so readers on any host find the
/// byte order from the magic number, and the bytes are the same whichever host wrote them.
enum PCAPFormat {
    /// The magic number of a file with microsecond timestamps.
    static let magic: UInt32 = 0xA1B2_C3D4
    /// The format's major version: 2.4.
    static let versionMajor: UInt16 = 2
    /// The format's minor version: 2.4.
    static let versionMinor: UInt16 = 4
    /// `LINKTYPE_RAW`: each packet starts with its IPv4 or IPv6 header, no link-layer header.
    static let linkTypeRaw: UInt32 = 101
    /// The longest packet a record holds; every synthesized packet fits, so none is truncated.
    static let snapshotLength: UInt32 = 65535

    /// The file header's size.
    static let globalHeaderSize = 24
    /// Each record's header size.
    static let recordHeaderSize = 16
    /// An IPv4 header without options.
    static let ipv4HeaderSize = 20
    /// An IPv6 header without extension headers.
    static let ipv6HeaderSize = 40
    /// A TCP header without options.
    static let tcpHeaderSize = 20
    /// The most payload one packet carries: the snapshot length less the larger (IPv6) IP header and the
    /// TCP header. It also keeps the IPv4 total length and the IPv6 payload length within 16 bits.
    static let maximumSegmentSize = Int(snapshotLength) - ipv6HeaderSize - tcpHeaderSize

    /// Bytes one record takes in the file.
    /// - Parameters:
    ///   - payloadLength: TCP payload bytes, at most ``maximumSegmentSize``.
    ///   - ipv4: Whether the packet is IPv4 (else IPv6).
    /// - Returns: The record header, IP and TCP headers and the payload.
    static func recordSize(payloadLength: Int, ipv4: Bool) -> Int {
        recordHeaderSize + (ipv4 ? ipv4HeaderSize : ipv6HeaderSize) + tcpHeaderSize + payloadLength
    }
}

/// When a packet was captured: seconds and microseconds since the Unix epoch.
struct PCAPTimestamp: Hashable, Sendable {
    /// Whole seconds since 1970-01-01 UTC (unsigned, so good until 2106).
    var seconds: UInt32
    /// Microseconds within the second, below 1,000,000.
    var microseconds: UInt32
}

extension ByteBuffer {
    /// Writes the pcap file header: version 2.4, UTC, snapshot length 65535, `LINKTYPE_RAW`.
    /// - Returns: The number of bytes written, ``PCAPFormat/globalHeaderSize``.
    @discardableResult
    mutating func writePCAPGlobalHeader() -> Int {
        var written = self.writeInteger(PCAPFormat.magic, endianness: .little)
        written += self.writeInteger(PCAPFormat.versionMajor, endianness: .little)
        written += self.writeInteger(PCAPFormat.versionMinor, endianness: .little)
        written += self.writeInteger(Int32(0), endianness: .little)  // thiszone: timestamps are UTC
        written += self.writeInteger(UInt32(0), endianness: .little)  // sigfigs: always 0
        written += self.writeInteger(PCAPFormat.snapshotLength, endianness: .little)
        written += self.writeInteger(PCAPFormat.linkTypeRaw, endianness: .little)
        return written
    }

    /// Writes one pcap record: its header and a whole IPv4 or IPv6 packet holding `segment` and `payload`,
    /// with the IPv4 header checksum and the TCP checksum filled in.
    ///
    /// The packet is IPv4 when both ends are IPv4, and IPv6 (IPv4 ends mapped) otherwise.
    /// - Parameters:
    ///   - timestamp: When the packet was seen.
    ///   - segment: The TCP header fields.
    ///   - payload: The TCP payload, at most ``PCAPFormat/maximumSegmentSize`` bytes; its reader index
    ///     is not moved.
    /// - Returns: The number of bytes written, ``PCAPFormat/recordSize(payloadLength:ipv4:)``.
    @discardableResult
    mutating func writePCAPRecord(
        timestamp: PCAPTimestamp,
        segment: TCPSegment,
        payload: ByteBuffer? = nil
    ) -> Int {
        let payloadLength = payload?.readableBytes ?? 0
        precondition(payloadLength <= PCAPFormat.maximumSegmentSize, "segment of \(payloadLength) bytes")
        let (source, destination) = CaptureEndpoint.sameFamily(segment.source, segment.destination)
        let ipv4 = source.address.isIPv4
        let recordStart = self.writerIndex
        let packetLength = PCAPFormat.recordSize(payloadLength: payloadLength, ipv4: ipv4) - PCAPFormat.recordHeaderSize
        let tcpLength = PCAPFormat.tcpHeaderSize + payloadLength

        self.writeInteger(timestamp.seconds, endianness: .little)
        self.writeInteger(timestamp.microseconds, endianness: .little)
        self.writeInteger(UInt32(packetLength), endianness: .little)  // incl_len: never truncated
        self.writeInteger(UInt32(packetLength), endianness: .little)  // orig_len

        let ipStart = self.writerIndex
        switch (source.address, destination.address) {
        case (.v4(let sourceAddress), .v4(let destinationAddress)):
            // RFC 791 §3.1.
            self.writeInteger(UInt8(0x45))  // version 4, header length 5 words
            self.writeInteger(UInt8(0))  // type of service
            self.writeInteger(UInt16(packetLength))  // total length
            self.writeInteger(UInt16(0))  // identification: unused, since nothing is fragmented
            self.writeInteger(UInt16(0x4000))  // flags: don't fragment
            self.writeInteger(UInt8(64))  // time to live
            self.writeInteger(UInt8(6))  // protocol: TCP
            self.writeInteger(UInt16(0))  // header checksum, filled in below
            self.writeInteger(sourceAddress)
            self.writeInteger(destinationAddress)
        default:
            // RFC 8200 §3.
            self.writeInteger(UInt32(0x6000_0000))  // version 6, traffic class 0, flow label 0
            self.writeInteger(UInt16(tcpLength))  // payload length
            self.writeInteger(UInt8(6))  // next header: TCP
            self.writeInteger(UInt8(64))  // hop limit
            self.writeCaptureIPAddress(source.address)
            self.writeCaptureIPAddress(destination.address)
        }

        // RFC 9293 §3.1.
        let tcpStart = self.writerIndex
        self.writeInteger(source.port)
        self.writeInteger(destination.port)
        self.writeInteger(segment.sequenceNumber)
        self.writeInteger(segment.acknowledgmentNumber)
        self.writeInteger(UInt8(0x50))  // data offset 5 words, no options
        self.writeInteger(segment.flags.rawValue)
        self.writeInteger(segment.window)
        self.writeInteger(UInt16(0))  // checksum, filled in below
        self.writeInteger(UInt16(0))  // urgent pointer
        if let payload {
            self.writeImmutableBuffer(payload)
        }

        // The TCP checksum covers a pseudo-header (RFC 9293 §3.1; RFC 8200 §8.1 for IPv6): both
        // addresses, the protocol and the segment length. The sums are the same for both layouts.
        let readerIndex = self.readerIndex
        var sum = InternetChecksum.add(source.address, to: 0)
        sum = InternetChecksum.add(destination.address, to: sum)
        sum &+= 6 &+ UInt64(tcpLength)
        sum = self.withUnsafeReadableBytes { bytes in
            let start = tcpStart - readerIndex
            return InternetChecksum.add(UnsafeRawBufferPointer(rebasing: bytes[start...]), to: sum)
        }
        self.setInteger(InternetChecksum.finish(sum), at: tcpStart + 16)
        if ipv4 {
            let headerSum = self.withUnsafeReadableBytes { bytes in
                let start = ipStart - readerIndex
                let header = bytes[start..<start + PCAPFormat.ipv4HeaderSize]
                return InternetChecksum.add(UnsafeRawBufferPointer(rebasing: header), to: 0)
            }
            self.setInteger(InternetChecksum.finish(headerSum), at: ipStart + 10)
        }
        return self.writerIndex - recordStart
    }

    /// Writes an address in network order: 4 bytes for IPv4, 16 for IPv6.
    @discardableResult
    mutating func writeCaptureIPAddress(_ address: CaptureIPAddress) -> Int {
        switch address {
        case .v4(let address):
            return self.writeInteger(address)
        case .v6(let high, let low):
            return self.writeInteger(high) + self.writeInteger(low)
        }
    }
}
