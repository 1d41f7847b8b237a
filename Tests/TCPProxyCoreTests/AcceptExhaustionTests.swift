import NIOCore
import Testing

@testable import TCPProxyCore

@Suite("Accept exhaustion episodes (no sockets)")
struct AcceptExhaustionTests {
    private let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    private func at(_ milliseconds: Int64) -> NIODeadline { self.start + .milliseconds(milliseconds) }

    @Test("the first failure begins an episode; failures after it, 100 ms apart, do not warn again")
    func warnsOnce() {
        var episode = AcceptExhaustion()
        #expect(!episode.isOngoing)
        var warnings = [episode.failed(at: self.at(0))]
        for step in 1...30 {
            warnings.append(episode.failed(at: self.at(Int64(step) * 100)))
        }
        #expect(warnings == [true] + Array(repeating: false, count: 30))
        #expect(episode.failures == 31)
    }

    @Test("successes between failures do not end it; one a quiet second after the last failure does, once")
    func endsAfterQuietSecond() {
        var episode = AcceptExhaustion()
        _ = episode.failed(at: self.at(0))
        let early = episode.succeeded(at: self.at(50))
        #expect(early == nil, "a descriptor came free for a moment")
        let again = episode.failed(at: self.at(100))
        #expect(!again, "the same episode")
        let soon = episode.succeeded(at: self.at(1099))
        #expect(soon == nil, "not yet a second without failures")
        let over = episode.succeeded(at: self.at(1100))
        #expect(over == 2, "over, after 2 failed accepts")
        #expect(!episode.isOngoing)
        let later = episode.succeeded(at: self.at(5000))
        #expect(later == nil, "said once")
        let next = episode.failed(at: self.at(6000))
        #expect(next, "a new episode warns again")
    }

    @Test("accepts that never failed end nothing")
    func quietListener() {
        var episode = AcceptExhaustion()
        let first = episode.succeeded(at: self.at(0))
        let second = episode.succeeded(at: self.at(10_000))
        #expect(first == nil && second == nil)
    }
}
