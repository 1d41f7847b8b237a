import Foundation

/// One packet read back from a pcap file written by ``CaptureWriter``: the fields tests look at.
struct CapturedPacket {
    /// Record header: seconds and microseconds.
    var seconds: UInt32
    var microseconds: UInt32
    /// Record header: bytes stored and bytes on the wire.
    var includedLength: Int
    var originalLength: Int
    /// 4 or 6.
    var ipVersion: Int
    /// Source and destination addresses, 4 or 16 bytes.
    var sourceAddress: [UInt8]
    var destinationAddress: [UInt8]
    var sourcePort: UInt16
    var destinationPort: UInt16
    var sequenceNumber: UInt32
    var acknowledgmentNumber: UInt32
    var flags: UInt8
    var payload: [UInt8]
    /// The whole IP packet.
    var packet: [UInt8]
}

/// Reads the pcap files the capture tests write (little-endian, `LINKTYPE_RAW`).
enum PCAPTestReader {
    struct FormatError: Error, CustomStringConvertible {
        var description: String
    }

    /// The packets of a whole file.
    static func packets(in bytes: [UInt8]) throws -> [CapturedPacket] {
        guard bytes.count >= 24 else { throw FormatError(description: "file shorter than its header") }
        guard little32(bytes, 0) == 0xA1B2_C3D4 else { throw FormatError(description: "bad magic") }
        guard little32(bytes, 20) == 101 else { throw FormatError(description: "not LINKTYPE_RAW") }
        var packets: [CapturedPacket] = []
        var offset = 24
        while offset < bytes.count {
            guard offset + 16 <= bytes.count else { throw FormatError(description: "cut record header") }
            let included = Int(little32(bytes, offset + 8))
            let original = Int(little32(bytes, offset + 12))
            guard offset + 16 + included <= bytes.count else { throw FormatError(description: "cut record") }
            let packet = Array(bytes[(offset + 16)..<(offset + 16 + included)])
            packets.append(
                try self.parse(
                    packet,
                    seconds: little32(bytes, offset),
                    microseconds: little32(bytes, offset + 4),
                    includedLength: included,
                    originalLength: original
                )
            )
            offset += 16 + included
        }
        return packets
    }

    /// The packets of a file on disk.
    static func packets(atPath path: String) throws -> [CapturedPacket] {
        try self.packets(in: Array(try Data(contentsOf: URL(fileURLWithPath: path))))
    }

    private static func parse(
        _ packet: [UInt8],
        seconds: UInt32,
        microseconds: UInt32,
        includedLength: Int,
        originalLength: Int
    ) throws -> CapturedPacket {
        let version = Int(packet[0] >> 4)
        let tcpStart: Int
        let source: [UInt8]
        let destination: [UInt8]
        switch version {
        case 4:
            tcpStart = Int(packet[0] & 0x0F) * 4
            source = Array(packet[12..<16])
            destination = Array(packet[16..<20])
        case 6:
            tcpStart = 40
            source = Array(packet[8..<24])
            destination = Array(packet[24..<40])
        default:
            throw FormatError(description: "IP version \(version)")
        }
        let dataOffset = Int(packet[tcpStart + 12] >> 4) * 4
        return CapturedPacket(
            seconds: seconds,
            microseconds: microseconds,
            includedLength: includedLength,
            originalLength: originalLength,
            ipVersion: version,
            sourceAddress: source,
            destinationAddress: destination,
            sourcePort: big16(packet, tcpStart),
            destinationPort: big16(packet, tcpStart + 2),
            sequenceNumber: big32(packet, tcpStart + 4),
            acknowledgmentNumber: big32(packet, tcpStart + 8),
            flags: packet[tcpStart + 13],
            payload: Array(packet[(tcpStart + dataOffset)...]),
            packet: packet
        )
    }
}

/// A little-endian `UInt32` at `offset`.
func little32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
    (0..<4).reduce(0) { $0 | UInt32(bytes[offset + $1]) << (8 * $1) }
}

/// A big-endian `UInt16` at `offset`.
func big16(_ bytes: [UInt8], _ offset: Int) -> UInt16 {
    UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
}

/// A big-endian `UInt32` at `offset`.
func big32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
    (0..<4).reduce(0) { $0 << 8 | UInt32(bytes[offset + $1]) }
}

/// The RFC 1071 checksum over `bytes` computed independently of the code under test: 0 when the bytes
/// hold a correct checksum.
func referenceChecksum(_ bytes: [UInt8]) -> UInt16 {
    var sum: UInt32 = 0
    var index = 0
    while index < bytes.count {
        let high = UInt32(bytes[index]) << 8
        let low = index + 1 < bytes.count ? UInt32(bytes[index + 1]) : 0
        sum += high | low
        index += 2
    }
    while sum >> 16 != 0 { sum = (sum & 0xFFFF) + (sum >> 16) }
    return ~UInt16(sum)
}

/// The TCP pseudo-header of a captured packet followed by its TCP segment, for ``referenceChecksum(_:)``.
func pseudoHeaderAndSegment(_ packet: CapturedPacket) -> [UInt8] {
    let tcpStart = packet.ipVersion == 4 ? 20 : 40
    let segment = Array(packet.packet[tcpStart...])
    let length = segment.count
    var bytes = packet.sourceAddress + packet.destinationAddress
    if packet.ipVersion == 4 {
        bytes += [0, 6, UInt8(length >> 8), UInt8(length & 0xFF)]
    } else {
        bytes += [UInt8(length >> 24), UInt8((length >> 16) & 0xFF), UInt8((length >> 8) & 0xFF), UInt8(length & 0xFF)]
        bytes += [0, 0, 0, 6]
    }
    return bytes + segment
}
