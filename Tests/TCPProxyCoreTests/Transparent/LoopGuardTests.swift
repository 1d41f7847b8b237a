import NIOCore
import Testing

@testable import TCPProxyCore

@Suite("Transparent: the loop guard")
struct LoopGuardTests {
    static func endpoint(_ text: String) -> IPEndpoint {
        // "HOST:PORT" or "[V6]:PORT"
        let colon = text.lastIndex(of: ":")!
        var host = String(text[..<colon])
        if host.hasPrefix("[") { host = String(host.dropFirst().dropLast()) }
        let port = Int(text[text.index(after: colon)...])!
        return IPEndpoint(try! SocketAddress(ipAddress: host, port: port))!
    }

    /// This host's addresses in the table below.
    static let local: Set<[UInt8]> = [[10, 77, 1, 1], [10, 77, 2, 1], endpoint("[fd77:1::1]:0").address]

    @Test(
        "A destination is a loop when it is the listener, or a local address on a wildcard listener's port",
        arguments: [
            // A listener on one address: only that address and port.
            ("10.77.1.1:15001", "10.77.1.1:15001", true),
            ("10.77.1.1:15001", "10.77.2.1:15001", false),
            ("10.77.1.1:15001", "10.77.1.1:80", false),
            ("10.77.1.1:15001", "10.77.2.2:15001", false),
            ("[fd77:1::1]:15001", "[fd77:1::1]:15001", true),
            ("[fd77:1::1]:15001", "[fd77:2::2]:15001", false),
            // 0.0.0.0: every local IPv4 address, loopback and 0.0.0.0 itself.
            ("0.0.0.0:15001", "10.77.1.1:15001", true),
            ("0.0.0.0:15001", "10.77.2.1:15001", true),
            ("0.0.0.0:15001", "127.0.0.5:15001", true),
            ("0.0.0.0:15001", "0.0.0.0:15001", true),
            ("0.0.0.0:15001", "10.77.2.2:15001", false),
            ("0.0.0.0:15001", "10.77.1.1:15002", false),
            ("0.0.0.0:15001", "[fd77:1::1]:15001", false),
            // ::: both families (dual-stack), IPv4-mapped destinations as IPv4.
            ("[::]:15001", "10.77.1.1:15001", true),
            ("[::]:15001", "[::ffff:10.77.1.1]:15001", true),
            ("[::]:15001", "[fd77:1::1]:15001", true),
            ("[::]:15001", "[::1]:15001", true),
            ("[::]:15001", "[fd77:2::2]:15001", false),
            ("[::]:15001", "10.77.2.2:15001", false),
            ("[::]:15001", "[fd77:1::1]:443", false),
        ]
    )
    func decisions(listener: String, destination: String, isLoop: Bool) {
        let guardian = LoopGuard(listener: Self.endpoint(listener))
        #expect(guardian.isLoop(Self.endpoint(destination), isLocalAddress: { Self.local.contains($0.address) }) == isLoop)
    }

    @Test("The interface list is read only when the port is the listener's")
    func asksOnlyOnPortMatch() {
        let guardian = LoopGuard(listener: Self.endpoint("0.0.0.0:15001"))
        var asked = 0
        _ = guardian.isLoop(Self.endpoint("10.77.2.2:80"), isLocalAddress: { _ in asked += 1; return true })
        #expect(asked == 0)
        _ = guardian.isLoop(Self.endpoint("10.77.2.2:15001"), isLocalAddress: { _ in asked += 1; return false })
        #expect(asked == 1)
    }

    @Test("This host's loopback address is local, a documentation address is not")
    func localAddresses() {
        #expect(LoopGuard.isLocalAddress(Self.endpoint("127.0.0.1:0")))
        #expect(!LoopGuard.isLocalAddress(Self.endpoint("192.0.2.77:0")))
    }
}

@Suite("Transparent: configuration and errors")
struct TransparentConfigurationTests {
    @Test("redirect is the default; the description names the mode and spoofing")
    func defaults() {
        let configuration = TransparentConfiguration()
        #expect(configuration.interception == .redirect)
        #expect(!configuration.spoofSource)
        #expect(ProxyMode.transparent(configuration).description == "transparent (redirect)")
        #expect(
            ProxyMode.transparent(.init(interception: .tproxy, spoofSource: true)).description
                == "transparent (tproxy, spoofing the client's address)"
        )
        #expect(ProxyMode.transparent(configuration).targetLabel == "original-destination")
        #expect(TransparentConfiguration.Interception.allCases.map(\.rawValue) == ["tproxy", "redirect"])
    }

    @Test("A missing privilege says which option needs CAP_NET_ADMIN and what to do")
    func privilegeError() {
        let error = ListenerError(
            endpoint: Endpoint(host: "0.0.0.0", port: 15001),
            underlying: TransparentError.transparentNotPermitted(option: "IP_TRANSPARENT")
        )
        #expect(
            error.description
                == "cannot listen on 0.0.0.0:15001: IP_TRANSPARENT needs CAP_NET_ADMIN or CAP_NET_RAW (run as root or grant one of them)"
        )
    }

    @Test("Refusals are rejection reasons with their own metric labels")
    func refusalReasons() {
        #expect(CloseReason.loopRefused.rawValue == "loopRefused")
        #expect(CloseReason.noOriginalDestination.rawValue == "noOriginalDestination")
        #expect(ProxyMetrics.rejectIndex(.loopRefused) != nil)
        #expect(ProxyMetrics.rejectIndex(.noOriginalDestination) != nil)
        #expect(!CloseReason.loopRefused.isAbortive)
    }
}
