import NIOCore
import Testing

@testable import TCPProxyCore

@Suite("Transparent: reading original destinations")
struct IPEndpointTests {
    #if os(Linux)
    // Bytes copied from real getsockopt calls in a REDIRECT setup (x86-64 and arm64 Linux: the family
    // is a little-endian u16, the port and address are in network order).

    @Test("SO_ORIGINAL_DST's struct sockaddr_in reads as an IPv4 address and port")
    func sockaddrIn() throws {
        let bytes: [UInt8] = [0x02, 0x00, 0x1B, 0x58, 10, 77, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0]
        let endpoint = try #require(IPEndpoint(sockaddr: bytes))
        #expect(endpoint.address == [10, 77, 2, 2])
        #expect(endpoint.port == 7000)
        #expect(endpoint.description == "10.77.2.2:7000")
    }

    @Test("IP6T_SO_ORIGINAL_DST's struct sockaddr_in6 reads as an IPv6 address and port")
    func sockaddrIn6() throws {
        let bytes: [UInt8] =
            [0x0A, 0x00, 0x1B, 0x58, 0, 0, 0, 0]
            + [0xFD, 0x77, 0x00, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02]
            + [0, 0, 0, 0]
        let endpoint = try #require(IPEndpoint(sockaddr: bytes))
        #expect(endpoint.address.count == 16)
        #expect(endpoint.port == 7000)
        #expect(endpoint.description == "[fd77:2::2]:7000")
    }

    @Test("An IPv4-mapped sockaddr_in6 (a dual-stack listener's IPv4 client) reads as IPv4")
    func mappedSockaddr() throws {
        let bytes: [UInt8] =
            [0x0A, 0x00, 0x3A, 0x99, 0, 0, 0, 0]
            + [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 10, 77, 1, 1]
            + [0, 0, 0, 0]
        let endpoint = try #require(IPEndpoint(sockaddr: bytes))
        #expect(endpoint == IPEndpoint(address: [10, 77, 1, 1], port: 15001))
        #expect(endpoint.isIPv4)
    }

    @Test("A link-local sockaddr_in6 keeps its interface (sin6_scope_id): in the NIO address, and named in the text")
    func linkLocalScope() throws {
        // fe80::1, port 80, interface 1 (`lo`, the one index every Linux namespace has).
        let bytes: [UInt8] =
            [0x0A, 0x00, 0x00, 0x50, 0, 0, 0, 0]
            + [0xFE, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01]
            + [0x01, 0x00, 0x00, 0x00]
        let endpoint = try #require(IPEndpoint(sockaddr: bytes))
        #expect(endpoint.isLinkLocal)
        #expect(endpoint.scopeID == 1)
        #expect(endpoint.description == "[fe80::1%lo]:80")
        #expect(IPEndpoint(endpoint.socketAddress) == endpoint)
        #expect(endpoint.with(port: 0).scopeID == 1)
    }

    @Test(
        "Bytes that are no IPv4 or IPv6 sockaddr read as nil",
        arguments: [
            [],
            [0x02, 0x00, 0x1B],  // shorter than a sockaddr
            [0x02, 0x00, 0x1B, 0x58, 10, 77, 2, 2, 0, 0, 0, 0, 0, 0, 0],  // one byte short of sockaddr_in
            [0x0A, 0x00, 0x1B, 0x58, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  // AF_INET6 but sockaddr_in-sized
            [0x01, 0x00, 0x2F, 0x74, 0x6D, 0x70, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  // AF_UNIX
        ] as [[UInt8]]
    )
    func malformed(bytes: [UInt8]) {
        #expect(IPEndpoint(sockaddr: bytes) == nil)
    }
    #endif

    @Test(
        "NIO addresses convert both ways, IPv4-mapped ones to IPv4",
        arguments: [
            ("10.77.2.2", 7000, "10.77.2.2:7000"),
            ("fd77:2::2", 443, "[fd77:2::2]:443"),
            ("::ffff:10.77.1.1", 15001, "10.77.1.1:15001"),
            ("::", 0, "[::]:0"),
            ("::1", 1, "[::1]:1"),
            ("2001:db8:0:0:1:0:0:1", 80, "[2001:db8::1:0:0:1]:80"),
            ("2001:db8:1:2:3:4:5:6", 80, "[2001:db8:1:2:3:4:5:6]:80"),
            ("2001:0:0:1:0:0:0:1", 80, "[2001:0:0:1::1]:80"),
        ]
    )
    func socketAddresses(host: String, port: Int, expected: String) throws {
        let address = try SocketAddress(ipAddress: host, port: port)
        let endpoint = try #require(IPEndpoint(address))
        #expect(endpoint.description == expected)
        #expect(IPEndpoint(endpoint.socketAddress) == endpoint)
        #expect(endpoint.socketAddress.port == port)
    }

    @Test("A Unix socket address is no IP endpoint")
    func unixAddress() throws {
        #expect(IPEndpoint(try SocketAddress(unixDomainSocketPath: "/tmp/x")) == nil)
    }

    @Test("Wildcard and loopback addresses are recognised")
    func addressKinds() {
        #expect(IPEndpoint(address: [0, 0, 0, 0], port: 1).isUnspecified)
        #expect(IPEndpoint(address: [UInt8](repeating: 0, count: 16), port: 1).isUnspecified)
        #expect(IPEndpoint(address: [127, 0, 0, 9], port: 1).isLoopback)
        #expect(IPEndpoint(address: [UInt8](repeating: 0, count: 15) + [1], port: 1).isLoopback)
        #expect(!IPEndpoint(address: [10, 0, 0, 1], port: 1).isLoopback)
        #expect(!IPEndpoint(address: [10, 0, 0, 1], port: 1).isUnspecified)
        #expect(IPEndpoint(address: [10, 0, 0, 1], port: 1).with(port: 0).port == 0)
    }

    @Test("A link-local destination without an interface takes the client's; other addresses stay as they are")
    func scopedLike() {
        let linkLocal = IPEndpoint(address: [0xFE, 0x80] + [UInt8](repeating: 0, count: 13) + [7], port: 80)
        let client = IPEndpoint(address: [0xFE, 0x80] + [UInt8](repeating: 0, count: 13) + [9], port: 40000, scopeID: 3)
        let global = IPEndpoint(address: [0xFD, 0x77] + [UInt8](repeating: 0, count: 13) + [2], port: 80)
        #expect(linkLocal.scoped(like: client).scopeID == 3)
        #expect(linkLocal.scoped(like: nil).scopeID == 0)
        #expect(linkLocal.scoped(like: global).scopeID == 0)
        #expect(IPEndpoint(address: linkLocal.address, port: 80, scopeID: 5).scoped(like: client).scopeID == 5)
        #expect(global.scoped(like: client) == global)
        #expect(!global.isLinkLocal && !IPEndpoint(address: [169, 254, 0, 1], port: 1).isLinkLocal)
        #expect(IPEndpoint(address: [10, 0, 0, 1], port: 1, scopeID: 3).scopeID == 0, "IPv4 has no scope")
    }
}
