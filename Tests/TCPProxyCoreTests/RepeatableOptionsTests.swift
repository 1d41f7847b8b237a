import Testing

@testable import TCPProxyCore

@Suite("Options given more than once")
struct RepeatableOptionsTests {
    @Test(
        "an option that takes one value is found when given twice, in either spelling",
        arguments: [
            (["forward", "--listen", "a:1", "--target", "b:1", "--listen", "c:1"], "forward", "listen", 2),
            (["forward", "--listen=a:1", "--listen", "c:1", "--listen=d:1"], "forward", "listen", 3),
            (["socks", "--listen", ":1", "--accept-proxy-protocol", "--accept-proxy-protocol"], "socks", "accept-proxy-protocol", 2),
            (["h", "1", "t", "2", "--threads", "1", "--stall-timeout", "2", "--threads=3"], nil, "threads", 2),
            // demux has one target; forward's repeats.
            (["demux", "--listen", ":1", "--target", "a:1", "--target", "b:1"], "demux", "target", 2),
            (["socks", "--listen", ":1", "--target", "a:1", "--target", "b:1"], "socks", "target", 2),
            // The first option to repeat is named, not the one that repeats most.
            (["--idle-timeout", "1", "--threads", "1", "--threads", "2", "--idle-timeout", "3", "--threads", "4"], nil, "threads", 3),
        ] as [([String], String?, String, Int)]
    )
    func found(words: [String], mode: String?, name: String, count: Int) throws {
        let repeated = try #require(RepeatableOptions.repeated(in: words, mode: mode))
        #expect(repeated.name == name)
        #expect(repeated.count == count)
        #expect(RepeatableOptions.message(name: repeated.name, count: repeated.count) == "--\(name) given \(count) times: give it once (only the last would count)")
    }

    @Test(
        "options that add a value each time, single dashes, and words after -- are not repeats",
        arguments: [
            (["forward", "--listen", "a:1", "--target", "b:1", "--target=c:1", "--allow", "::1", "--allow", "10.0.0.0/8"], "forward"),
            (["socks", "--listen", ":1", "--deny-destination", "10.0.0.0/8", "--deny-destination", "::1"], "socks"),
            (["demux", "--trusted-proxy", "::1", "--trusted-proxy=10.0.0.1/32", "--accept-proxy-protocol"], "demux"),
            (["forward", "--listen", "a:1", "--", "--listen", "b:1"], "forward"),
            (["h", "1", "t", "2", "-", "-", "--allow", "::1", "--allow", "::2"], nil),
            ([], nil),
        ] as [([String], String?)]
    )
    func notRepeats(words: [String], mode: String?) {
        #expect(RepeatableOptions.repeated(in: words, mode: mode) == nil)
    }
}
