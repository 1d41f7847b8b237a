import NIOCore
import Testing

@testable import TCPProxyCore

/// Whole handshakes through ``SOCKSServerStateMachine``: what is written, and how each one ends, whether the
/// bytes come whole, one at a time or in random pieces.
@Suite("SOCKS handshake state machine")
struct SOCKSServerStateMachineTests {
    typealias ConnectRequest = SOCKSServerStateMachine.ConnectRequest

    /// One handshake: the client's bytes, and what the proxy must write and do.
    struct Case: CustomStringConvertible, Sendable {
        var name: String
        var input: [UInt8]
        var users: Bool = false
        var written: [UInt8]
        var outcome: HandshakeDriver.Outcome
        var description: String { self.name }
    }

    static let greetingNoAuth: [UInt8] = [0x05, 0x01, 0x00]
    static let greetingUserPass: [UInt8] = [0x05, 0x01, 0x02]
    static let aliceLogin: [UInt8] = [0x01, 0x05] + ascii("alice") + [0x06] + ascii("s3cret")
    static let request4: [UInt8] = [0x04, 0x01, 0x00, 0x50, 0x7F, 0x00, 0x00, 0x01, 0x00]
    static let request5: [UInt8] = [0x05, 0x01, 0x00, 0x01, 0x7F, 0x00, 0x00, 0x01, 0x00, 0x50]
    static func socks5Failure(_ code: UInt8) -> [UInt8] { [0x05, code, 0x00, 0x01, 0, 0, 0, 0, 0, 0] }
    static let socks4Rejected: [UInt8] = [0x00, 0x5B, 0, 0, 0, 0, 0, 0]

    static let valid: [Case] = [
        Case(
            name: "SOCKS4 CONNECT, then early data",
            input: request4 + ascii("GET /"),
            written: [],
            outcome: .connect(.init(version: .socks4, destination: .address(address("127.0.0.1", 80))), leftover: ascii("GET /"))
        ),
        Case(
            name: "SOCKS4a CONNECT to a name",
            input: [0x04, 0x01, 0x00, 0x50, 0x00, 0x00, 0x00, 0x01] + ascii("me") + [0x00] + ascii("localhost") + [0x00],
            written: [],
            outcome: .connect(.init(version: .socks4a, destination: .name("localhost", port: 80)), leftover: [])
        ),
        Case(
            name: "SOCKS5 no-auth CONNECT to IPv4",
            input: greetingNoAuth + request5,
            written: [0x05, 0x00],
            outcome: .connect(.init(version: .socks5, destination: .address(address("127.0.0.1", 80))), leftover: [])
        ),
        Case(
            name: "SOCKS5 no-auth, offering both methods, CONNECT to IPv6",
            input: [0x05, 0x02, 0x02, 0x00, 0x05, 0x01, 0x00, 0x04] + [UInt8](repeating: 0, count: 15) + [0x01, 0x00, 0x16],
            written: [0x05, 0x00],
            outcome: .connect(.init(version: .socks5, destination: .address(address("::1", 22))), leftover: [])
        ),
        Case(
            name: "SOCKS5 username/password, CONNECT to a domain, early data",
            input: [0x05, 0x02, 0x00, 0x02] + aliceLogin + [0x05, 0x01, 0x00, 0x03, 0x09] + ascii("localhost") + [0x1F, 0x90]
                + ascii("hi"),
            users: true,
            written: [0x05, 0x02, 0x01, 0x00],
            outcome: .connect(.init(version: .socks5, destination: .name("localhost", port: 8080), user: "alice"), leftover: ascii("hi"))
        ),
        Case(
            name: "SOCKS5 password containing a colon",
            input: greetingUserPass + [0x01, 0x03] + ascii("bob") + [0x05] + ascii("pa:ss") + request5,
            users: true,
            written: [0x05, 0x02, 0x01, 0x00],
            outcome: .connect(.init(version: .socks5, destination: .address(address("127.0.0.1", 80)), user: "bob"), leftover: [])
        ),
    ]

    static let malformed: [Case] = [
        Case(name: "wrong version (6)", input: [0x06, 0x01, 0x00], written: [], outcome: .fail(.unsupportedVersion(6))),
        Case(name: "garbage: an HTTP request", input: ascii("GET / HTTP/1.1\r\n\r\n"), written: [], outcome: .fail(.unsupportedVersion(0x47))),
        Case(name: "garbage: a NUL byte", input: [0x00, 0xFF], written: [], outcome: .fail(.unsupportedVersion(0))),
        Case(name: "SOCKS5 zero methods", input: [0x05, 0x00], written: [0x05, 0xFF], outcome: .fail(.socks5NoMethods)),
        Case(name: "SOCKS5 only GSSAPI offered", input: [0x05, 0x01, 0x01], written: [0x05, 0xFF], outcome: .fail(.socks5NoAcceptableMethod)),
        Case(
            name: "SOCKS5 only username/password offered, no --users",
            input: greetingUserPass, written: [0x05, 0xFF], outcome: .fail(.socks5NoAcceptableMethod)
        ),
        Case(
            name: "SOCKS5 no-auth offered, --users set",
            input: greetingNoAuth + request5, users: true, written: [0x05, 0xFF], outcome: .fail(.socks5NoAcceptableMethod)
        ),
        Case(
            name: "SOCKS5 wrong password",
            input: greetingUserPass + [0x01, 0x05] + ascii("alice") + [0x05] + ascii("wrong") + request5, users: true,
            written: [0x05, 0x02, 0x01, 0x01], outcome: .fail(.socks5AuthenticationFailed)
        ),
        Case(
            name: "SOCKS5 unknown user",
            input: greetingUserPass + [0x01, 0x03] + ascii("eve") + [0x06] + ascii("s3cret"), users: true,
            written: [0x05, 0x02, 0x01, 0x01], outcome: .fail(.socks5AuthenticationFailed)
        ),
        Case(
            name: "SOCKS5 empty user and password",
            input: greetingUserPass + [0x01, 0x00, 0x00], users: true,
            written: [0x05, 0x02, 0x01, 0x01], outcome: .fail(.socks5AuthenticationFailed)
        ),
        Case(
            name: "SOCKS5 authentication version 5",
            input: greetingUserPass + [0x05] + Array(aliceLogin.dropFirst()), users: true,
            written: [0x05, 0x02, 0x01, 0x01], outcome: .fail(.socks5AuthenticationVersion(5))
        ),
        Case(
            name: "SOCKS5 request with version 4",
            input: greetingNoAuth + [0x04] + Array(request5.dropFirst()),
            written: [0x05, 0x00] + socks5Failure(0x01), outcome: .fail(.socks5RequestVersion(4))
        ),
        Case(
            name: "SOCKS5 request with a non-zero reserved byte",
            input: greetingNoAuth + [0x05, 0x01, 0x07, 0x01, 0x7F, 0x00, 0x00, 0x01, 0x00, 0x50],
            written: [0x05, 0x00] + socks5Failure(0x01), outcome: .fail(.socks5Reserved(7))
        ),
        Case(
            name: "SOCKS5 BIND",
            input: greetingNoAuth + [0x05, 0x02, 0x00, 0x01, 0x7F, 0x00, 0x00, 0x01, 0x00, 0x50],
            written: [0x05, 0x00] + socks5Failure(0x07), outcome: .fail(.socks5CommandNotSupported(2))
        ),
        Case(
            name: "SOCKS5 UDP ASSOCIATE",
            input: greetingNoAuth + [0x05, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
            written: [0x05, 0x00] + socks5Failure(0x07), outcome: .fail(.socks5CommandNotSupported(3))
        ),
        Case(
            name: "SOCKS5 unknown command 0x09",
            input: greetingNoAuth + [0x05, 0x09, 0x00, 0x01, 0x7F, 0x00, 0x00, 0x01, 0x00, 0x50],
            written: [0x05, 0x00] + socks5Failure(0x07), outcome: .fail(.socks5CommandNotSupported(9))
        ),
        Case(
            name: "SOCKS5 address type 2",
            input: greetingNoAuth + [0x05, 0x01, 0x00, 0x02, 0x7F, 0x00, 0x00, 0x01, 0x00, 0x50],
            written: [0x05, 0x00] + socks5Failure(0x08), outcome: .fail(.socks5AddressTypeNotSupported(2))
        ),
        Case(
            name: "SOCKS5 address type 0",
            input: greetingNoAuth + [0x05, 0x01, 0x00, 0x00],
            written: [0x05, 0x00] + socks5Failure(0x08), outcome: .fail(.socks5AddressTypeNotSupported(0))
        ),
        Case(
            name: "SOCKS5 empty domain name",
            input: greetingNoAuth + [0x05, 0x01, 0x00, 0x03, 0x00, 0x00, 0x50],
            written: [0x05, 0x00] + socks5Failure(0x01), outcome: .fail(.socks5InvalidHostName)
        ),
        Case(
            name: "SOCKS5 domain name with a NUL",
            input: greetingNoAuth + [0x05, 0x01, 0x00, 0x03, 0x04] + ascii("ab") + [0x00] + ascii("c") + [0x00, 0x50],
            written: [0x05, 0x00] + socks5Failure(0x01), outcome: .fail(.socks5InvalidHostName)
        ),
        Case(name: "SOCKS4 BIND", input: [0x04, 0x02] + Array(request4.dropFirst(2)), written: socks4Rejected, outcome: .fail(.socks4CommandNotSupported(2))),
        Case(name: "SOCKS4 command 0", input: [0x04, 0x00] + Array(request4.dropFirst(2)), written: socks4Rejected, outcome: .fail(.socks4CommandNotSupported(0))),
        Case(
            name: "SOCKS4 user id that never ends",
            input: Array(request4.dropLast()) + [UInt8](repeating: 0x75, count: 300),
            written: socks4Rejected, outcome: .fail(.socks4UserIDTooLong)
        ),
        Case(
            name: "SOCKS4a host name that never ends",
            input: [0x04, 0x01, 0x00, 0x50, 0x00, 0x00, 0x00, 0x01, 0x00] + [UInt8](repeating: 0x68, count: 300),
            written: socks4Rejected, outcome: .fail(.socks4HostNameTooLong)
        ),
        Case(
            name: "SOCKS4a empty host name",
            input: [0x04, 0x01, 0x00, 0x50, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00],
            written: socks4Rejected, outcome: .fail(.socks4InvalidHostName)
        ),
        Case(
            name: "SOCKS4a host name with a space",
            input: [0x04, 0x01, 0x00, 0x50, 0x00, 0x00, 0x00, 0x01, 0x00] + ascii("a b") + [0x00],
            written: socks4Rejected, outcome: .fail(.socks4InvalidHostName)
        ),
        Case(name: "SOCKS4 when --users is set", input: request4, users: true, written: socks4Rejected, outcome: .fail(.socks4AuthenticationRequired)),
    ]

    static let truncated: [Case] = [
        Case(name: "nothing", input: [], written: [], outcome: .needMore),
        Case(name: "SOCKS4 header only", input: Array(request4.prefix(5)), written: [], outcome: .needMore),
        Case(name: "SOCKS4 without the user id's NUL", input: Array(request4.dropLast()) + ascii("fred"), written: [], outcome: .needMore),
        Case(name: "SOCKS5 greeting missing a method", input: [0x05, 0x02, 0x00], written: [], outcome: .needMore),
        Case(name: "SOCKS5 greeting, half a request", input: greetingNoAuth + Array(request5.prefix(6)), written: [0x05, 0x00], outcome: .needMore),
        Case(
            name: "SOCKS5 greeting, half the credentials", input: greetingUserPass + Array(aliceLogin.prefix(9)), users: true,
            written: [0x05, 0x02], outcome: .needMore
        ),
        Case(
            name: "SOCKS5 domain name cut short", input: greetingNoAuth + [0x05, 0x01, 0x00, 0x03, 0xFF] + [UInt8](repeating: 0x61, count: 254),
            written: [0x05, 0x00], outcome: .needMore
        ),
    ]

    func check(_ testCase: Case) {
        for feeding in Feeding.all {
            let driver = HandshakeDriver.run(testCase.input, users: testCase.users ? testUsers : nil, feeding: feeding)
            #expect(driver.written == testCase.written, "\(testCase.name), \(feeding): wrote \(hex(driver.written))")
            #expect(driver.outcome == testCase.outcome, "\(testCase.name), \(feeding)")
            #expect(driver.largestHeld <= 520, "\(testCase.name), \(feeding): held \(driver.largestHeld) bytes")
        }
    }

    @Test("valid handshakes connect, with the bytes after the request kept as early data", arguments: valid)
    func validHandshakes(_ testCase: Case) {
        self.check(testCase)
    }

    @Test("malformed and unsupported handshakes get their reply (or none), then a close", arguments: malformed)
    func malformedHandshakes(_ testCase: Case) {
        self.check(testCase)
    }

    @Test("truncated handshakes wait, having written only what complete messages earned", arguments: truncated)
    func truncatedHandshakes(_ testCase: Case) {
        self.check(testCase)
    }

    @Test("a SOCKS4 user id that never ends is rejected after 8 + 255 bytes, however long the stream")
    func unendingUserID() {
        var driver = HandshakeDriver()
        driver.receive(Array(Self.request4.dropLast()))
        var sent = 8
        while case .needMore = driver.outcome, sent < 1 << 20 {
            driver.receive([UInt8](repeating: 0x41, count: 4096))
            sent += 4096
        }
        #expect(driver.outcome == .fail(.socks4UserIDTooLong))
        #expect(sent == 8 + 4096, "rejected within the first chunk past the bound")
        #expect(driver.largestHeld <= 8 + 255)
    }

    @Test("the request version is known once a request is read, even a refused one")
    func requestVersion() {
        #expect(HandshakeDriver.run(Self.request4).machine.requestVersion == .socks4)
        #expect(HandshakeDriver.run(Self.greetingNoAuth).machine.requestVersion == nil)
        #expect(HandshakeDriver.run(Self.greetingNoAuth + [0x05, 0x02, 0x00, 0x01, 0, 0, 0, 0, 0, 0]).machine.requestVersion == .socks5)
        #expect(HandshakeDriver.run(Self.request4, users: testUsers).machine.requestVersion == .socks4)
    }

    @Test("errors name the reply they earn")
    func errorReplies() {
        #expect(SOCKSError.unsupportedVersion(9).reply == nil)
        #expect(SOCKSError.socks4UserIDTooLong.reply == .socks4(.init(code: .rejected)))
        #expect(SOCKSError.socks5CommandNotSupported(2).reply == .socks5(.init(code: .commandNotSupported)))
        #expect(SOCKSError.socks5AddressTypeNotSupported(2).reply == .socks5(.init(code: .addressTypeNotSupported)))
        #expect(SOCKSError.socks5AuthenticationFailed.reply == .socks5AuthenticationStatus(succeeded: false))
        #expect(SOCKSError.socks5AuthenticationFailed.isAuthenticationFailure)
        // Answered `01 01` like a wrong password, and counted and logged (notAllowed) like one.
        #expect(SOCKSError.socks5AuthenticationVersion(5).reply == .socks5AuthenticationStatus(succeeded: false))
        #expect(SOCKSError.socks5AuthenticationVersion(5).isAuthenticationFailure)
        #expect(!SOCKSError.socks5NoMethods.isAuthenticationFailure)
    }
}
