import NIOCore
import Testing

@testable import TCPProxyCore

@Suite("Token bucket")
struct TokenBucketTests {
    private let start = NIODeadline.uptimeNanoseconds(5_000_000_000)

    @Test("the burst is 1/16 s of the rate, at least 64 bytes; reads are at most one burst and 64 KiB")
    func burst() {
        #expect(TokenBucket.burst(forRate: 16 * 1024) == 1024)
        #expect(TokenBucket.burst(forRate: 1 << 20) == 65536)
        #expect(TokenBucket.burst(forRate: 100 << 20) == 100 << 16)
        #expect(TokenBucket.burst(forRate: 100) == 64)
        #expect(TokenBucket.burst(forRate: 512) == 64)
        #expect(TokenBucket.burst(forRate: 4096) == 256)
        #expect(TokenBucket.readLimit(forRate: 100 << 20) == 65536)
        #expect(TokenBucket.readLimit(forRate: 512 * 1024) == 32768)
    }

    @Test("reads may go ahead until the tokens are spent, then wait exactly long enough")
    func waits() {
        var bucket = TokenBucket(rate: 16 * 1024, now: self.start)
        #expect(bucket.waitTime(now: self.start) == nil)
        bucket.consume(1024, now: self.start)
        let wait = bucket.waitTime(now: self.start)
        #expect(wait != nil)
        // One byte short of positive: about 1/16384 s.
        #expect(wait!.nanoseconds <= 1_000_000)
        bucket.consume(16 * 1024, now: self.start)
        let longer = bucket.waitTime(now: self.start)!
        #expect(abs(Double(longer.nanoseconds) / 1e9 - 1.0) < 0.01, "a second's worth of debt waits a second")
        #expect(bucket.waitTime(now: self.start + .seconds(1) + .milliseconds(1)) == nil)
    }

    @Test(
        "over three simulated seconds the delivered bytes match the rate within 10%",
        arguments: [512, 4096, 16 * 1024, 512 * 1024, 10 << 20, 100 << 20]
    )
    func accuracy(rate: Int) {
        var bucket = TokenBucket(rate: rate, now: self.start)
        var now = self.start
        var delivered = 0
        let read = TokenBucket.readLimit(forRate: rate)
        // A reader that always has data: reads whenever allowed, waits when told to.
        while now < self.start + .seconds(3) {
            if let wait = bucket.waitTime(now: now) {
                now = now + wait
                continue
            }
            bucket.consume(read, now: now)
            delivered += read
        }
        let expected = Double(rate) * 3
        #expect(abs(Double(delivered) - expected) / expected < 0.10, "delivered \(delivered) of \(expected)")
    }

    @Test("an idle spell does not save up more than the burst")
    func noHoarding() {
        var bucket = TokenBucket(rate: 16 * 1024, now: self.start)
        bucket.consume(1024, now: self.start)
        // An hour later only the burst is there.
        let later = self.start + .seconds(3600)
        bucket.consume(1024, now: later)
        #expect(bucket.waitTime(now: later) != nil)
    }
}
