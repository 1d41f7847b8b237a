import Testing

@testable import TCPProxyCore

/// The source port of a spoofed connection in redirect mode: anything of the range but the client's own.
@Suite("Spoofed source port")
struct SpoofedSourcePortTests {
    @Test("never the avoided port, always in the range while it holds another", arguments: [1...2, 45001...45003, 32768...60999])
    func avoids(range: ClosedRange<Int>) {
        for _ in 0..<2000 {
            let avoided = Int.random(in: range)
            let port = SpoofedSourcePort.pick(avoiding: avoided, in: range)
            #expect(port != avoided && range.contains(port), "\(port) for \(avoided) in \(range)")
        }
    }

    @Test("a range of the avoided port alone gives its neighbour")
    func onlyTheAvoidedPort() {
        #expect(SpoofedSourcePort.pick(avoiding: 45001, in: 45001...45001) == 45002)
        #expect(SpoofedSourcePort.pick(avoiding: 65535, in: 65535...65535) == 1)
    }
}
