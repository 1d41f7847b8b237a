import NIOCore
import Testing

@testable import TCPProxyCore

@Suite("Configuration values")
struct ConfigurationTests {
    @Test(
        "sizes parse with 1024-based suffixes",
        arguments: [("512", 512), ("64K", 65536), ("64k", 65536), ("10M", 10 << 20), ("1G", 1 << 30)]
    )
    func sizes(text: String, bytes: Int) {
        #expect(ByteSize(parsing: text)?.bytes == bytes)
    }

    @Test("bad sizes are refused", arguments: ["", "K", "12Q", "-1", "0", "1.5M", "99999999999999999999G", "１K"])
    func badSizes(text: String) {
        #expect(ByteSize(parsing: text) == nil)
        #expect(ByteSize.isZero(text) == (text == "0"), "only a zero in the notation is a zero")
    }

    @Test("zeros in the notation are told apart from malformed sizes", arguments: ["0", "00", "0K", "000g"])
    func zeroSizes(text: String) {
        #expect(ByteSize(parsing: text) == nil)
        #expect(ByteSize.isZero(text))
    }

    @Test("sizes print in their largest whole unit")
    func sizeDescription() {
        #expect(ByteSize(bytes: 65536).description == "64K")
        #expect(ByteSize(bytes: 1000).description == "1000")
        #expect(ByteSize(bytes: 3 << 30).description == "3G")
    }

    @Test(
        "endpoints parse IPv4, bracketed IPv6, names and bare ports",
        arguments: [
            ("127.0.0.1:8080", "127.0.0.1", 8080), ("[::1]:0", "::1", 0), ("example.com:443", "example.com", 443),
            (":9000", "0.0.0.0", 9000), ("[fe80::1%lo]:1", "fe80::1%lo", 1),
        ]
    )
    func endpoints(text: String, host: String, port: Int) throws {
        let endpoint = try Endpoint(parsing: text)
        #expect(endpoint.host == host)
        #expect(endpoint.port == port)
    }

    @Test("bad endpoints are refused", arguments: ["8080", "host:", "host:65536", "host:-1", "::1:80", "[::1]80", "[]:80", "h:8x"])
    func badEndpoints(text: String) {
        #expect(throws: EndpointError.self) { try Endpoint(parsing: text) }
    }

    @Test("a destination needs a port: port 0 is refused there, and only there")
    func destinations() throws {
        #expect(throws: EndpointError.zeroDestinationPort("127.0.0.1:0")) { try Endpoint(parsingDestination: "127.0.0.1:0") }
        #expect(try Endpoint(parsing: "127.0.0.1:0").port == 0)
        #expect(try Endpoint(parsingDestination: "[::1]:9") == Endpoint(host: "::1", port: 9))
        #expect(throws: EndpointError.zeroDestinationPort("10.0.0.1:0")) { try TargetSpec(parsing: "10.0.0.1:0,weight=2") }
    }

    @Test("two listen addresses clash when one port could not be bound for both: the same address, or a wildcard that takes the other")
    func clashes() {
        func endpoint(_ host: String, _ port: Int = 8080) -> Endpoint { Endpoint(host: host, port: port) }
        #expect(endpoint("127.0.0.1").clashes(with: endpoint("127.0.0.1")))
        #expect(endpoint("0.0.0.0").clashes(with: endpoint("127.0.0.1")))
        #expect(endpoint("127.0.0.1").clashes(with: endpoint("0.0.0.0")))
        #expect(endpoint("localhost").clashes(with: endpoint("127.0.0.1")))
        #expect(endpoint("::").clashes(with: endpoint("127.0.0.1")), "dual-stack [::] takes IPv4 too")
        #expect(endpoint("::1").clashes(with: endpoint("::")))
        #expect(!endpoint("0.0.0.0").clashes(with: endpoint("::1")), "0.0.0.0 takes no IPv6")
        #expect(!endpoint("127.0.0.1").clashes(with: endpoint("127.0.0.2")))
        #expect(!endpoint("127.0.0.1").clashes(with: endpoint("127.0.0.1", 8081)))
        #expect(!endpoint("127.0.0.1", 0).clashes(with: endpoint("127.0.0.1", 0)), "two ephemeral ports")
    }

    @Test("a target that is the listener's own address is a loop; another host or port is not")
    func loops() {
        let any = Endpoint(host: "0.0.0.0", port: 8080)
        let loopback = Endpoint(host: "127.0.0.1", port: 8080)
        #expect(loopback.loops(into: loopback))
        #expect(loopback.loops(into: any))
        #expect(Endpoint(host: "localhost", port: 8080).loops(into: any))
        #expect(Endpoint(host: "::1", port: 8080).loops(into: Endpoint(host: "::", port: 8080)))
        #expect(!Endpoint(host: "127.0.0.1", port: 8081).loops(into: any))
        #expect(!Endpoint(host: "127.0.0.2", port: 8080).loops(into: loopback))
        #expect(!Endpoint(host: "192.0.2.1", port: 8080).loops(into: any), "another machine's port 8080")
        #expect(!Endpoint(host: "127.0.0.1", port: 0).loops(into: Endpoint(host: "127.0.0.1", port: 0)))
        // Spelled otherwise: a name, an IPv4-mapped address, an inet_aton short form.
        #expect(Endpoint(host: "localhost", port: 8080).loops(into: loopback))
        #expect(Endpoint(host: "::ffff:127.0.0.1", port: 8080).loops(into: loopback))
        #expect(Endpoint(host: "127.1", port: 8080).loops(into: loopback))
        #expect(Endpoint(host: "::ffff:127.0.0.1", port: 8080).loops(into: Endpoint(host: "::", port: 8080)))
        #expect(!Endpoint(host: "::1", port: 8080).loops(into: any), "0.0.0.0 takes no IPv6")
        #expect(Endpoint(host: "0.0.0.0", port: 8080).loops(into: loopback), "a connect to 0.0.0.0 reaches loopback")
        #expect(!Endpoint(host: "0.0.0.0", port: 8080).loops(into: Endpoint(host: "192.0.2.1", port: 8080)))
    }

    @Test("names are resolved only when the ports match; a name that resolves to the listener is a loop, one that does not resolve is not")
    func loopsThroughNames() {
        let listener = Endpoint(host: "10.1.1.1", port: 8080)
        var asked: [String] = []
        func resolve(_ host: String) -> [[UInt8]] {
            asked.append(host)
            switch host {
            case "10.1.1.1", "self.example": return [[10, 1, 1, 1]]
            case "both.example": return [[0xFD] + [UInt8](repeating: 0, count: 15), [10, 1, 1, 1]]
            case "other.example": return [[10, 1, 1, 2]]
            default: return []
            }
        }
        func never(_: IPEndpoint) -> Bool { false }
        #expect(Endpoint(host: "self.example", port: 8080).loops(into: listener, resolve: resolve, isLocalAddress: never))
        #expect(Endpoint(host: "both.example", port: 8080).loops(into: listener, resolve: resolve, isLocalAddress: never))
        #expect(!Endpoint(host: "other.example", port: 8080).loops(into: listener, resolve: resolve, isLocalAddress: never))
        #expect(!Endpoint(host: "nowhere.example", port: 8080).loops(into: listener, resolve: resolve, isLocalAddress: never))
        asked.removeAll()
        #expect(!Endpoint(host: "self.example", port: 9090).loops(into: listener, resolve: resolve, isLocalAddress: never))
        #expect(asked.isEmpty, "another port needs no resolving")
        // A wildcard listener: whatever the name resolves to that is this machine's.
        let wildcard = Endpoint(host: "0.0.0.0", port: 8080)
        let local: (IPEndpoint) -> Bool = { $0.address == [10, 1, 1, 2] }
        #expect(Endpoint(host: "other.example", port: 8080).loops(into: wildcard, resolve: { $0 == "0.0.0.0" ? [[0, 0, 0, 0]] : resolve($0) }, isLocalAddress: local))
    }

    @Test("an IPv6 endpoint prints with brackets")
    func endpointDescription() {
        #expect(Endpoint(host: "::1", port: 80).description == "[::1]:80")
        #expect(Endpoint(host: "10.0.0.1", port: 80).description == "10.0.0.1:80")
    }

    @Test("networks match the addresses inside them")
    func cidr() throws {
        let ten = try CIDR(parsing: "10.0.0.0/8")
        #expect(ten.contains(try SocketAddress(ipAddress: "10.200.3.4", port: 1)))
        #expect(!ten.contains(try SocketAddress(ipAddress: "11.0.0.1", port: 1)))
        #expect(ten.contains(try SocketAddress(ipAddress: "::ffff:10.1.2.3", port: 1)))
        #expect(!ten.contains(try SocketAddress(ipAddress: "::1", port: 1)))
        let host = try CIDR(parsing: "127.0.0.1")
        #expect(host.prefixLength == 32)
        #expect(host.contains(try SocketAddress(ipAddress: "127.0.0.1", port: 9)))
        #expect(!host.contains(try SocketAddress(ipAddress: "127.0.0.2", port: 9)))
        let v6 = try CIDR(parsing: "fd00::/8")
        #expect(v6.contains(try SocketAddress(ipAddress: "fd12::1", port: 1)))
        #expect(!v6.contains(try SocketAddress(ipAddress: "fe80::1", port: 1)))
        #expect(try CIDR(parsing: "0.0.0.0/0").contains(try SocketAddress(ipAddress: "8.8.8.8", port: 1)))
        #expect(try CIDR(parsing: "10.1.2.3/8").description == "10.0.0.0/8")
        #expect(try CIDR(parsing: "10.0.0.0/12").contains(try SocketAddress(ipAddress: "10.15.255.255", port: 1)))
        #expect(!(try CIDR(parsing: "10.0.0.0/12").contains(try SocketAddress(ipAddress: "10.16.0.0", port: 1))))
        // The IPv4-mapped form of a network covers the IPv4 addresses it maps, as HAProxy matches them.
        let mapped = try CIDR(parsing: "::ffff:10.0.0.0/104")
        #expect(mapped.contains(try SocketAddress(ipAddress: "10.1.2.3", port: 1)))
        #expect(!mapped.contains(try SocketAddress(ipAddress: "11.1.2.3", port: 1)))
        #expect(try CIDR(parsing: "::/0").contains(try SocketAddress(ipAddress: "192.0.2.1", port: 1)))
        #expect(!v6.contains(try SocketAddress(ipAddress: "10.1.2.3", port: 1)), "fd00::/8 holds no IPv4 address")
    }

    @Test("a network written with host bits set matches its network, and is named in a warning")
    func cidrHostBits() throws {
        let written = try CIDR(parsing: "1.2.3.4/8")
        #expect(written.description == "1.0.0.0/8")
        #expect(written.textWithHostBits == "1.2.3.4/8")
        #expect(written.contains(try SocketAddress(ipAddress: "1.9.9.9", port: 1)))
        let clean = try ["10.0.0.0/8", "127.0.0.1", "::1", "fd00::/8", "0.0.0.0/0"].map(CIDR.init(parsing:))
        #expect(clean.allSatisfy { $0.textWithHostBits == nil })
        #expect(
            CIDR.hostBitWarnings(clean + [written, try CIDR(parsing: "fd00::1/64")], option: "--allow") == [
                "--allow 1.2.3.4/8 has host bits set: it matches 1.0.0.0/8",
                "--allow fd00::1/64 has host bits set: it matches fd00::/64",
            ])
    }

    @Test("bad networks are refused", arguments: ["10.0.0.0/33", "::/129", "example.com/8", "10.0.0.0/", "10.0.0.0/x", ""])
    func badCIDR(text: String) {
        #expect(throws: CIDRError.self) { try CIDR(parsing: text) }
    }

    @Test("admission checks the allow list, then the connection limit")
    func admission() throws {
        let local = try SocketAddress(ipAddress: "127.0.0.1", port: 5)
        let open = AdmissionPolicy()
        #expect(open.decide(address: local, activeBridges: 1_000_000) == .admit)
        let policy = AdmissionPolicy(allow: [try CIDR(parsing: "10.0.0.0/8")], maxConnections: 2)
        #expect(policy.decide(address: local, activeBridges: 0) == .notAllowed)
        #expect(policy.decide(address: nil, activeBridges: 0) == .notAllowed)
        let ten = try SocketAddress(ipAddress: "10.0.0.7", port: 5)
        #expect(policy.decide(address: ten, activeBridges: 1) == .admit)
        #expect(policy.decide(address: ten, activeBridges: 2) == .limitReached)
    }
}
