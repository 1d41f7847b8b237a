import NIOCore
import NIOTestUtils
import Testing

@testable import TCPProxyCore

/// Byte-exact SOCKS4, SOCKS4a and SOCKS5 messages, both ways.
@Suite("SOCKS parsers and writers")
struct SOCKSParserTests {
    // MARK: Requests

    static let socks4Connect: [UInt8] = [0x04, 0x01, 0x00, 0x50, 0x7F, 0x00, 0x00, 0x01] + ascii("fred") + [0x00]
    static let socks4aConnect: [UInt8] =
        [0x04, 0x01, 0x01, 0xBB, 0x00, 0x00, 0x00, 0x01] + ascii("fred") + [0x00] + ascii("example.com") + [0x00]
    static let socks5IPv4: [UInt8] = [0x05, 0x01, 0x00, 0x01, 0x7F, 0x00, 0x00, 0x01, 0x00, 0x50]
    static let socks5IPv6: [UInt8] = [0x05, 0x01, 0x00, 0x04] + [UInt8](repeating: 0, count: 15) + [0x01, 0x01, 0xBB]
    static let socks5Domain: [UInt8] = [0x05, 0x01, 0x00, 0x03, 0x0B] + ascii("example.com") + [0x00, 0x50]
    static let credentials: [UInt8] = [0x01, 0x05] + ascii("alice") + [0x06] + ascii("s3cret")

    func parse<T>(_ bytes: [UInt8], _ parser: (inout ByteBuffer) throws -> T?) throws -> (T?, consumed: Int) {
        var buffer = ByteBuffer(bytes: bytes)
        let result = try parser(&buffer)
        return (result, bytes.count - buffer.readableBytes)
    }

    @Test("reads a SOCKS4 CONNECT request with a user id")
    func socks4() throws {
        let (request, consumed) = try self.parse(Self.socks4Connect) { try $0.readSOCKS4Request() }
        #expect(request == SOCKS4Request(command: .connect, destination: .address(address("127.0.0.1", 80)), userID: ascii("fred")))
        #expect(request?.isSOCKS4a == false)
        #expect(consumed == Self.socks4Connect.count)
    }

    @Test("reads a SOCKS4a request with a host name")
    func socks4a() throws {
        let (request, consumed) = try self.parse(Self.socks4aConnect + [0xAA]) { try $0.readSOCKS4Request() }
        #expect(request == SOCKS4Request(command: .connect, destination: .name("example.com", port: 443), userID: ascii("fred")))
        #expect(request?.isSOCKS4a == true)
        #expect(consumed == Self.socks4aConnect.count, "the byte after the request is left for the server")
    }

    @Test("reads SOCKS4 with an empty user id and with one of exactly 255 bytes")
    func socks4UserIDBounds() throws {
        let empty: [UInt8] = [0x04, 0x01, 0x00, 0x50, 0x0A, 0x00, 0x00, 0x01, 0x00]
        #expect(try self.parse(empty) { try $0.readSOCKS4Request() }.0?.userID == [])
        let longest = Array(empty.dropLast()) + [UInt8](repeating: 0x61, count: 255) + [0x00]
        #expect(try self.parse(longest) { try $0.readSOCKS4Request() }.0?.userID.count == 255)
        let tooLong = Array(empty.dropLast()) + [UInt8](repeating: 0x61, count: 256)
        #expect(throws: SOCKSError.socks4UserIDTooLong) { try self.parse(tooLong) { try $0.readSOCKS4Request() } }
        // 255 bytes and no NUL yet: still waiting, nothing consumed.
        let waiting = Array(empty.dropLast()) + [UInt8](repeating: 0x61, count: 255)
        let (none, consumed) = try self.parse(waiting) { try $0.readSOCKS4Request() }
        #expect(none == nil && consumed == 0)
    }

    @Test("a SOCKS4a host name that never ends is rejected once it passes 255 bytes")
    func socks4aHostBound() throws {
        let head: [UInt8] = [0x04, 0x01, 0x00, 0x50, 0x00, 0x00, 0x00, 0x09, 0x00]
        #expect(try self.parse(head + [UInt8](repeating: 0x62, count: 255)) { try $0.readSOCKS4Request() }.0 == nil)
        #expect(throws: SOCKSError.socks4HostNameTooLong) {
            try self.parse(head + [UInt8](repeating: 0x62, count: 256)) { try $0.readSOCKS4Request() }
        }
        #expect(throws: SOCKSError.socks4InvalidHostName) { try self.parse(head + [0x00]) { try $0.readSOCKS4Request() } }
        #expect(throws: SOCKSError.socks4InvalidHostName) {
            try self.parse(head + ascii("bad host") + [0x00]) { try $0.readSOCKS4Request() }
        }
    }

    @Test("reads SOCKS5 greetings")
    func greeting() throws {
        #expect(try self.parse([0x05, 0x01, 0x00]) { try $0.readSOCKS5Greeting() }.0 == SOCKS5Greeting(methods: [.noneRequired]))
        #expect(
            try self.parse([0x05, 0x02, 0x00, 0x02]) { try $0.readSOCKS5Greeting() }.0
                == SOCKS5Greeting(methods: [.noneRequired, .usernamePassword])
        )
        #expect(throws: SOCKSError.socks5NoMethods) { try self.parse([0x05, 0x00]) { try $0.readSOCKS5Greeting() } }
        #expect(throws: SOCKSError.unsupportedVersion(4)) { try self.parse([0x04, 0x01, 0x00]) { try $0.readSOCKS5Greeting() } }
        #expect(try self.parse([0x05, 0x03, 0x00, 0x01]) { try $0.readSOCKS5Greeting() }.0 == nil)
    }

    @Test("reads RFC 1929 credentials")
    func credentialsParse() throws {
        let (credentials, consumed) = try self.parse(Self.credentials) { try $0.readSOCKS5Credentials() }
        #expect(credentials == SOCKS5Credentials(username: ascii("alice"), password: ascii("s3cret")))
        #expect(consumed == Self.credentials.count)
        #expect(credentials.map { "\($0)" } == "user alice", "the password never reaches a description")
        #expect(throws: SOCKSError.socks5AuthenticationVersion(5)) {
            try self.parse([0x05, 0x01, 0x61, 0x01, 0x62]) { try $0.readSOCKS5Credentials() }
        }
    }

    @Test("reads SOCKS5 CONNECT requests to IPv4, IPv6 and a domain name")
    func socks5Requests() throws {
        #expect(
            try self.parse(Self.socks5IPv4) { try $0.readSOCKS5Request() }.0
                == SOCKS5Request(command: .connect, destination: .address(address("127.0.0.1", 80)))
        )
        #expect(
            try self.parse(Self.socks5IPv6) { try $0.readSOCKS5Request() }.0
                == SOCKS5Request(command: .connect, destination: .address(address("::1", 443)))
        )
        #expect(
            try self.parse(Self.socks5Domain) { try $0.readSOCKS5Request() }.0
                == SOCKS5Request(command: .connect, destination: .name("example.com", port: 80))
        )
        let bind = [0x05, 0x02] + Self.socks5IPv4.dropFirst(2)
        #expect(try self.parse(bind) { try $0.readSOCKS5Request() }.0?.command == .bind)
    }

    @Test(
        "rejects malformed SOCKS5 requests with the error that knows their reply",
        arguments: [
            ([0x04, 0x01, 0x00, 0x01, 0x7F, 0x00, 0x00, 0x01, 0x00, 0x50], SOCKSError.socks5RequestVersion(4)),
            ([0x05, 0x01, 0x01, 0x01, 0x7F, 0x00, 0x00, 0x01, 0x00, 0x50], .socks5Reserved(1)),
            ([0x05, 0x01, 0x00, 0x02, 0x7F, 0x00, 0x00, 0x01, 0x00, 0x50], .socks5AddressTypeNotSupported(2)),
            ([0x05, 0x01, 0x00, 0xFF], .socks5AddressTypeNotSupported(0xFF)),
            ([0x05, 0x01, 0x00, 0x03, 0x00, 0x00, 0x50], .socks5InvalidHostName),
            ([0x05, 0x01, 0x00, 0x03, 0x03, 0x61, 0x00, 0x62, 0x00, 0x50], .socks5InvalidHostName),
            ([0x05, 0x01, 0x00, 0x03, 0x02, 0x0A, 0x0D, 0x00, 0x50], .socks5InvalidHostName),
        ] as [([UInt8], SOCKSError)]
    )
    func malformedSOCKS5Requests(bytes: [UInt8], error: SOCKSError) throws {
        var buffer = ByteBuffer(bytes: bytes)
        #expect(throws: error) { try buffer.readSOCKS5Request() }
        #expect(buffer.readableBytes == bytes.count, "the reader index is left where it was")
    }

    @Test("every proper prefix of a valid message is 'need more', with nothing consumed")
    func truncated() throws {
        let messages: [([UInt8], (inout ByteBuffer) throws -> Bool)] = [
            (Self.socks4Connect, { try $0.readSOCKS4Request() != nil }),
            (Self.socks4aConnect, { try $0.readSOCKS4Request() != nil }),
            ([0x05, 0x02, 0x00, 0x02], { try $0.readSOCKS5Greeting() != nil }),
            (Self.credentials, { try $0.readSOCKS5Credentials() != nil }),
            (Self.socks5IPv4, { try $0.readSOCKS5Request() != nil }),
            (Self.socks5IPv6, { try $0.readSOCKS5Request() != nil }),
            (Self.socks5Domain, { try $0.readSOCKS5Request() != nil }),
        ]
        for (message, parse) in messages {
            for length in 0..<message.count {
                var buffer = ByteBuffer(bytes: message[..<length])
                #expect(try parse(&buffer) == false, "\(hex(Array(message[..<length])))")
                #expect(buffer.readableBytes == length)
            }
            var whole = ByteBuffer(bytes: message)
            #expect(try parse(&whole) == true)
            #expect(whole.readableBytes == 0)
        }
    }

    // MARK: With NIO's ByteToMessageDecoderVerifier: whole, byte by byte, many at once

    @Test("the SOCKS4 parser passes ByteToMessageDecoderVerifier")
    func verifySOCKS4() throws {
        try ByteToMessageDecoderVerifier.verifyDecoder(
            inputOutputPairs: [
                (ByteBuffer(bytes: Self.socks4Connect), [SOCKS4Request(command: .connect, destination: .address(address("127.0.0.1", 80)), userID: ascii("fred"))]),
                (ByteBuffer(bytes: Self.socks4aConnect), [SOCKS4Request(command: .connect, destination: .name("example.com", port: 443), userID: ascii("fred"))]),
                (
                    ByteBuffer(bytes: [0x04, 0x02, 0x00, 0x15, 0x0A, 0x00, 0x00, 0x02, 0x00]),
                    [SOCKS4Request(command: .bind, destination: .address(address("10.0.0.2", 21)), userID: [])]
                ),
            ],
            decoderFactory: { ParserDecoder { try $0.readSOCKS4Request() } }
        )
    }

    @Test("the SOCKS5 greeting and credential parsers pass ByteToMessageDecoderVerifier")
    func verifySOCKS5Negotiation() throws {
        try ByteToMessageDecoderVerifier.verifyDecoder(
            inputOutputPairs: [
                (ByteBuffer(bytes: [0x05, 0x01, 0x00]), [SOCKS5Greeting(methods: [.noneRequired])]),
                (ByteBuffer(bytes: [0x05, 0x03, 0x00, 0x01, 0x02]), [SOCKS5Greeting(methods: [.noneRequired, .init(value: 1), .usernamePassword])]),
            ],
            decoderFactory: { ParserDecoder { try $0.readSOCKS5Greeting() } }
        )
        try ByteToMessageDecoderVerifier.verifyDecoder(
            inputOutputPairs: [
                (ByteBuffer(bytes: Self.credentials), [SOCKS5Credentials(username: ascii("alice"), password: ascii("s3cret"))]),
                (ByteBuffer(bytes: [0x01, 0x00, 0x00]), [SOCKS5Credentials(username: [], password: [])]),
            ],
            decoderFactory: { ParserDecoder { try $0.readSOCKS5Credentials() } }
        )
    }

    @Test("the SOCKS5 request parser passes ByteToMessageDecoderVerifier")
    func verifySOCKS5Request() throws {
        try ByteToMessageDecoderVerifier.verifyDecoder(
            inputOutputPairs: [
                (ByteBuffer(bytes: Self.socks5IPv4), [SOCKS5Request(command: .connect, destination: .address(address("127.0.0.1", 80)))]),
                (ByteBuffer(bytes: Self.socks5IPv6), [SOCKS5Request(command: .connect, destination: .address(address("::1", 443)))]),
                (ByteBuffer(bytes: Self.socks5Domain), [SOCKS5Request(command: .connect, destination: .name("example.com", port: 80))]),
                (
                    ByteBuffer(bytes: [0x05, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]),
                    [SOCKS5Request(command: .udpAssociate, destination: .address(address("0.0.0.0", 0)))]
                ),
            ],
            decoderFactory: { ParserDecoder { try $0.readSOCKS5Request() } }
        )
    }

    // MARK: Replies

    static func written(_ reply: SOCKSReply) -> [UInt8] { HandshakeDriver.bytes(of: reply) }

    @Test("writes SOCKS4 replies: granted with the bound IPv4 address, rejected with zeros")
    func socks4Replies() {
        #expect(
            Self.written(.socks4(.init(code: .granted, boundAddress: address("10.1.2.3", 0x1234))))
                == [0x00, 0x5A, 0x12, 0x34, 0x0A, 0x01, 0x02, 0x03]
        )
        #expect(Self.written(.socks4(.init(code: .rejected))) == [0x00, 0x5B, 0, 0, 0, 0, 0, 0])
        #expect(
            Self.written(.socks4(.init(code: .granted, boundAddress: address("::1", 80)))) == [0x00, 0x5A, 0, 0, 0, 0, 0, 0],
            "SOCKS4 has no room for IPv6"
        )
    }

    @Test("writes SOCKS5 replies with IPv4, IPv6 and no bound address")
    func socks5Replies() {
        #expect(
            Self.written(.socks5(.init(code: .succeeded, boundAddress: address("10.1.2.3", 0x1234))))
                == [0x05, 0x00, 0x00, 0x01, 0x0A, 0x01, 0x02, 0x03, 0x12, 0x34]
        )
        #expect(
            Self.written(.socks5(.init(code: .succeeded, boundAddress: address("::1", 0x1234))))
                == [0x05, 0x00, 0x00, 0x04] + [UInt8](repeating: 0, count: 15) + [0x01, 0x12, 0x34]
        )
        #expect(Self.written(.socks5(.init(code: .connectionRefused))) == [0x05, 0x05, 0x00, 0x01, 0, 0, 0, 0, 0, 0])
        #expect(Self.written(.socks5MethodSelection(.noneRequired)) == [0x05, 0x00])
        #expect(Self.written(.socks5MethodSelection(.noneAcceptable)) == [0x05, 0xFF])
        #expect(Self.written(.socks5AuthenticationStatus(succeeded: true)) == [0x01, 0x00])
        #expect(Self.written(.socks5AuthenticationStatus(succeeded: false)) == [0x01, 0x01])
    }

    @Test("reply codes label metrics as 0x00 .. 0x08, 0x5a, 0x5b")
    func labels() {
        #expect(SOCKSReply.label(0) == "0x00")
        #expect(SOCKSReply.label(8) == "0x08")
        #expect(SOCKSReply.label(0x5A) == "0x5a")
        #expect(SOCKSReply.success(.socks5, bound: nil).code == 0)
        #expect(SOCKSReply.failure(.socks4a, ChannelError.connectTimeout(.seconds(1))).code == 0x5B)
        #expect(SOCKSReply.socks5MethodSelection(.noneRequired).code == nil)
    }
}
