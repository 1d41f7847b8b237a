import Foundation
import NIOCore
import Testing

@testable import TCPProxyCore

@Suite("Capture: writer and file")
struct CaptureWriterTests {
    @Test("a capture file reads back in tcpdump: handshakes, payload both ways, FINs, a reset, IPv4 and IPv6")
    func tcpdumpReadsTheFile() throws {
        let path = temporaryCapturePath("capture")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let writer = try CaptureWriter(path: path)

        let v4 = writer.conversation(
            client: try SocketAddress(ipAddress: "127.0.0.1", port: 50000),
            server: try SocketAddress(ipAddress: "127.0.0.1", port: 8080)
        )
        v4.record(ByteBuffer(string: "hello CAPTURE-UPSTREAM-MARKER\n"), direction: .upstream)
        v4.record(ByteBuffer(string: "hello CAPTURE-DOWNSTREAM-MARKER\n"), direction: .downstream)
        v4.recordEnd(.upstream)
        v4.record(ByteBuffer(string: "more after the client's half-close\n"), direction: .downstream)
        v4.recordEnd(.downstream)

        let v6 = writer.conversation(
            client: try SocketAddress(ipAddress: "::1", port: 50001),
            server: try SocketAddress(ipAddress: "::1", port: 9090)
        )
        v6.record(ByteBuffer(string: "CAPTURE-IPV6-MARKER\n"), direction: .upstream)
        v6.recordEnd(.downstream)
        v6.recordEnd(.upstream)

        let mixed = writer.conversation(
            client: try SocketAddress(ipAddress: "127.0.0.1", port: 50002),
            server: try SocketAddress(ipAddress: "::1", port: 9091)
        )
        mixed.record(ByteBuffer(string: "CAPTURE-MIXED-MARKER\n"), direction: .downstream)
        mixed.recordReset(.downstream)
        writer.close()

        // IPv4: handshake 3, data 1 + 1, FIN 1, data 1, FIN and the final ACK 2. IPv6: 3 + 1 + 1 + 2.
        // Mixed: 3 + 1 + RST 1.
        #expect(writer.writtenRecords == 9 + 7 + 5)
        #expect(writer.droppedRecords == 0)
        #expect(writer.queuedBytes == 0)

        let packets = try PCAPTestReader.packets(atPath: path)
        #expect(packets.count == 21)
        for packet in packets {
            #expect(packet.includedLength == packet.originalLength)
            if packet.ipVersion == 4 { #expect(referenceChecksum(Array(packet.packet[0..<20])) == 0) }
            #expect(referenceChecksum(pseudoHeaderAndSegment(packet)) == 0)
        }

        guard let dump = try Tcpdump.read(path, ["-A"]) else { return }
        #expect(dump.status == 0, "tcpdump failed: \(dump.output)")
        #expect(dump.output.contains("CAPTURE-UPSTREAM-MARKER"))
        #expect(dump.output.contains("CAPTURE-DOWNSTREAM-MARKER"))
        #expect(dump.output.contains("CAPTURE-IPV6-MARKER"))
        #expect(dump.output.contains("CAPTURE-MIXED-MARKER"))
        #expect(dump.output.occurrences(of: "[F.]") == 4)
        #expect(dump.output.occurrences(of: "[S]") == 3)
        #expect(dump.output.occurrences(of: "[S.]") == 3)
        #expect(dump.output.occurrences(of: "[R.]") == 1)
        #expect(dump.output.contains("127.0.0.1.50000 > 127.0.0.1.8080"))
        #expect(dump.output.contains("127.0.0.1.8080 > 127.0.0.1.50000"))
        #expect(dump.output.contains("::1.50001 > ::1.9090"))
        #expect(dump.output.contains("::ffff:127.0.0.1.50002"))
        #expect(!dump.packets.lowercased().contains("truncated"), "\(dump.output)")
        #expect(!dump.packets.lowercased().contains("bad"), "\(dump.output)")

        // With -vv tcpdump verifies every checksum: the IPv4 header's and each TCP segment's.
        guard let verbose = try Tcpdump.read(path, ["-vv"]) else { return }
        #expect(verbose.status == 0)
        #expect(verbose.output.occurrences(of: "(correct)") == 21, "\(verbose.output)")
        #expect(!verbose.packets.contains("incorrect"), "\(verbose.output)")
        #expect(!verbose.packets.lowercased().contains("bad"), "\(verbose.output)")
    }

    @Test("payload and acknowledgments follow each other in the file, so the stream reassembles")
    func sequenceNumbersInTheFile() throws {
        let path = temporaryCapturePath("sequence")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let writer = try CaptureWriter(path: path)
        let conversation = writer.conversation(
            client: try SocketAddress(ipAddress: "10.1.2.3", port: 40000),
            server: try SocketAddress(ipAddress: "10.9.8.7", port: 443)
        )
        conversation.record(ByteBuffer(string: "abc"), direction: .upstream)
        conversation.record(ByteBuffer(string: "defgh"), direction: .upstream)
        conversation.record(ByteBuffer(string: "12"), direction: .downstream)
        conversation.recordEnd(.downstream)
        conversation.record(ByteBuffer(string: "i"), direction: .upstream)
        conversation.recordEnd(.upstream)
        writer.close()

        let packets = try PCAPTestReader.packets(atPath: path)
        #expect(packets.count == 10)
        guard packets.count == 10 else { return }
        let clientISN = packets[0].sequenceNumber
        let serverISN = packets[1].sequenceNumber
        let relative = packets.map { packet -> [UInt32] in
            let fromClient = packet.sourcePort == 40000
            let seq = packet.sequenceNumber &- (fromClient ? clientISN : serverISN)
            let ack = packet.flags & 0x10 == 0 ? 0 : packet.acknowledgmentNumber &- (fromClient ? serverISN : clientISN)
            return [fromClient ? 0 : 1, UInt32(packet.flags), seq, ack, UInt32(packet.payload.count)]
        }
        // [from client?, flags, relative seq, relative ack, payload length], as Wireshark shows them.
        #expect(
            relative == [
                [0, 0x02, 0, 0, 0],  // SYN
                [1, 0x12, 0, 1, 0],  // SYN-ACK
                [0, 0x10, 1, 1, 0],  // ACK
                [0, 0x18, 1, 1, 3],  // "abc"
                [0, 0x18, 4, 1, 5],  // "defgh"
                [1, 0x18, 1, 9, 2],  // "12"
                [1, 0x11, 3, 9, 0],  // server FIN
                [0, 0x18, 9, 4, 1],  // "i", acknowledging the FIN
                [0, 0x11, 10, 4, 0],  // client FIN
                [1, 0x10, 4, 11, 0],  // the server's ACK of it
            ]
        )
        #expect(packets[0].sourceAddress == [10, 1, 2, 3] && packets[0].destinationAddress == [10, 9, 8, 7])
        #expect(packets.flatMap(\.payload) == Array("abcdefgh12i".utf8))
        let timestamps = packets.map { UInt64($0.seconds) * 1_000_000 + UInt64($0.microseconds) }
        #expect(timestamps == timestamps.sorted())
        let now = UInt64(Date().timeIntervalSince1970)
        #expect(UInt64(packets[0].seconds) + 60 > now && UInt64(packets[0].seconds) <= now)
    }

    @Test("a large chunk is split into segments that fit the snapshot length")
    func largeChunkIsSplit() throws {
        let path = temporaryCapturePath("split")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let writer = try CaptureWriter(path: path)
        let conversation = writer.conversation(
            client: try SocketAddress(ipAddress: "::1", port: 1234),
            server: try SocketAddress(ipAddress: "::1", port: 80)
        )
        let payload = (0..<150_000).map { UInt8(truncatingIfNeeded: $0 % 251) }
        var buffer = ByteBuffer(bytes: [0xEE, 0xEE] + payload)
        buffer.moveReaderIndex(forwardBy: 2)  // a reader index other than 0
        conversation.record(buffer, direction: .downstream)
        writer.close()

        let data = try PCAPTestReader.packets(atPath: path).filter { !$0.payload.isEmpty }
        #expect(data.map(\.payload.count) == [65_475, 65_475, 19_050])
        #expect(data.map(\.includedLength).allSatisfy { $0 <= 65_535 })
        #expect(data.flatMap(\.payload) == payload)
        if data.count == 3 {
            #expect(data[1].sequenceNumber == data[0].sequenceNumber &+ 65_475)
            #expect(data[2].sequenceNumber == data[1].sequenceNumber &+ 65_475)
        }
        for packet in data {
            #expect(referenceChecksum(pseudoHeaderAndSegment(packet)) == 0)
        }
        guard let dump = try Tcpdump.read(path, ["-vv"]) else { return }
        #expect(dump.status == 0)
        #expect(!dump.packets.lowercased().contains("truncated"), "\(dump.output)")
        #expect(dump.output.occurrences(of: "(correct)") == 6)
    }

    @Test("a file that cannot be opened is a one-line error naming it")
    func cannotOpen() throws {
        let missing = "/nonexistent-tcpproxy-directory/out.pcap"
        #expect(throws: CaptureError(path: missing, reason: "no such file or directory")) {
            try CaptureWriter(path: missing)
        }
        let directory = FileManager.default.temporaryDirectory.path
        do {
            _ = try CaptureWriter(path: directory)
            Issue.record("opened a directory as a capture file")
        } catch {
            #expect("\(error)" == "cannot write capture file \(directory): is a directory")
        }
    }

    @Test("close is idempotent, and records after it are ignored")
    func closeIsIdempotent() throws {
        let path = temporaryCapturePath("close")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let writer = try CaptureWriter(path: path)
        let conversation = writer.conversation(
            client: try SocketAddress(ipAddress: "127.0.0.1", port: 1),
            server: try SocketAddress(ipAddress: "127.0.0.1", port: 2)
        )
        writer.close()
        writer.close()
        conversation.record(ByteBuffer(string: "late"), direction: .upstream)
        conversation.recordEnd(.upstream)
        #expect(writer.writtenRecords == 3)
        #expect(writer.droppedRecords == 0)
        let size = try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int
        #expect(size == 24 + 3 * 56)
    }
}
