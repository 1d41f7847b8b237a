import Logging
import Testing

@testable import TCPProxyCore

@Suite("Log lines")
struct ProxyLogHandlerTests {
    @Test("text lines put sorted metadata after the message, quoting values with spaces")
    func text() {
        let line = ProxyLogHandler.formatLine(
            format: .text,
            time: "T",
            level: .info,
            message: "bridge closed",
            metadata: ["close.reason": "completed", "bridge.id": "7", "error": "connection reset by peer"]
        )
        #expect(line == "T info bridge closed bridge.id=7 close.reason=completed error=\"connection reset by peer\"\n")
    }

    @Test("JSON lines escape quotes, backslashes and control characters")
    func json() {
        let line = ProxyLogHandler.formatLine(
            format: .json,
            time: "T",
            level: .warning,
            message: "a \"b\"\\\n",
            metadata: ["k": "\u{1}"]
        )
        #expect(line == #"{"time":"T","level":"warning","message":"a \"b\"\\\n","k":"\u0001"}"# + "\n")
    }

    @Test("JSON lines write values logged as numbers as numbers, and everything else as strings")
    func jsonNumbers() {
        let line = ProxyLogHandler.formatLine(
            format: .json,
            time: "T",
            level: .info,
            message: "m",
            metadata: [
                "a": .stringConvertible(UInt64(42)), "b": .stringConvertible(0.25), "c": "7",
                "d": .stringConvertible(Double.nan), "e": .stringConvertible(CloseReason.completed),
            ]
        )
        #expect(line == #"{"time":"T","level":"info","message":"m","a":42,"b":0.25,"c":"7","d":"nan","e":"completed"}"# + "\n")
        let text = ProxyLogHandler.formatLine(format: .text, time: "T", level: .info, message: "m", metadata: ["a": .stringConvertible(UInt64(42))])
        #expect(text == "T info m a=42\n", "text lines are unchanged")
    }

    @Test("timestamps are ISO 8601 UTC with milliseconds")
    func timestamp() {
        let stamp = ProxyLogHandler.timestamp()
        #expect(stamp.count == 24)
        #expect(stamp.hasSuffix("Z"))
        #expect(stamp.dropFirst(10).first == "T")
    }
}
