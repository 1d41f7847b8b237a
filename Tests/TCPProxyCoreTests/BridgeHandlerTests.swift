import NIOCore
import NIOEmbedded
import Testing

@testable import TCPProxyCore

@Suite("Bridge handler")
struct BridgeHandlerTests {
    @Test("bytes pass both ways unchanged once connected")
    func forwards() throws {
        let harness = try BridgeHarness()
        try harness.activate()
        try harness.connect()
        try harness.receive("ping", from: .client)
        #expect(try harness.written(to: .server) == "ping")
        try harness.receive("pong", from: .server)
        #expect(try harness.written(to: .client) == "pong")
    }

    @Test("bytes sent before the server is up are kept and delivered in order")
    func earlyData() throws {
        let harness = try BridgeHarness()
        try harness.activate()
        try harness.receive("hello ", from: .client)
        try harness.receive("world", from: .client)
        #expect(try harness.written(to: .server) == "")
        try harness.connect()
        #expect(try harness.written(to: .server) == "hello world")
    }

    @Test("early data stops reading the client at the high-water mark, and reading resumes after connect")
    func earlyDataIsBounded() throws {
        var configuration = BridgeConfiguration()
        configuration.highWaterMark = 8
        let harness = try BridgeHarness(configuration: configuration)
        try harness.activate()
        #expect(harness.readReaches(.client))
        try harness.receive("12345678", from: .client)
        #expect(!harness.readReaches(.client))
        let before = harness.clientRecorder.reads
        try harness.connect()
        #expect(harness.clientRecorder.reads == before + 1, "the held read is passed on")
        #expect(try harness.written(to: .server) == "12345678")
    }

    @Test("a side is not read while its partner cannot take more, and is read again when it can")
    func backPressure() throws {
        let harness = try BridgeHarness()
        try harness.activate()
        try harness.connect()
        harness.setWritable(.server, false)
        #expect(!harness.readReaches(.client))
        #expect(harness.readReaches(.server), "the other direction is unaffected")
        let before = harness.clientRecorder.reads
        harness.setWritable(.server, true)
        #expect(harness.clientRecorder.reads == before + 1)

        harness.setWritable(.client, false)
        #expect(!harness.readReaches(.server))
        harness.setWritable(.client, true)
        #expect(harness.readReaches(.server))
    }

    @Test("client EOF shuts down writing to the server after its data, and downstream keeps flowing")
    func halfClose() throws {
        let harness = try BridgeHarness()
        try harness.activate()
        try harness.connect()
        try harness.receive("last words", from: .client)
        harness.inputClosed(on: .client)
        #expect(try harness.written(to: .server) == "last words")
        #expect(harness.serverRecorder.outputShutdowns == 1)
        #expect(harness.clientRecorder.outputShutdowns == 0)
        try harness.receive("reply", from: .server)
        #expect(try harness.written(to: .client) == "reply")
    }

    @Test("client EOF before connect is passed on after the early data")
    func earlyEOF() throws {
        let harness = try BridgeHarness()
        try harness.activate()
        try harness.receive("request", from: .client)
        harness.inputClosed(on: .client)
        #expect(harness.serverRecorder.outputShutdowns == 0)
        try harness.connect()
        #expect(try harness.written(to: .server) == "request")
        #expect(harness.serverRecorder.outputShutdowns == 1)
    }

    @Test("a failed connect closes the client and reports connectFailed")
    func connectFailed() throws {
        let harness = try BridgeHarness()
        try harness.activate()
        harness.failConnect(IOError(errnoCode: 111, reason: "connect"))
        #expect(!harness.client.isActive)
        #expect(harness.finishedReasons == [.connectFailed])
    }

    @Test("a connect timeout reports connectTimeout")
    func connectTimeout() throws {
        let harness = try BridgeHarness()
        try harness.activate()
        harness.failConnect(ChannelError.connectTimeout(.seconds(10)))
        #expect(harness.finishedReasons == [.connectTimeout])
    }

    @Test("an error on the server closes the client, reported as serverReset")
    func resetPropagates() throws {
        let harness = try BridgeHarness()
        try harness.activate()
        try harness.connect()
        harness.error(on: .server)
        #expect(!harness.client.isActive)
        #expect(!harness.server.isActive)
        #expect(harness.finishedReasons == [.serverReset])
    }

    @Test("the client closing mid-stream closes the server, reported as clientReset")
    func clientGone() throws {
        let harness = try BridgeHarness()
        try harness.activate()
        try harness.connect()
        harness.close(.client)
        #expect(!harness.server.isActive)
        #expect(harness.finishedReasons == [.clientReset])
    }

    @Test("both EOFs and both closes report completed once")
    func completes() throws {
        let harness = try BridgeHarness()
        try harness.activate()
        try harness.connect()
        harness.inputClosed(on: .client)
        harness.inputClosed(on: .server)
        #expect(harness.clientRecorder.outputShutdowns == 1)
        #expect(harness.serverRecorder.outputShutdowns == 1)
        // Both halves of each socket are shut: the bridge closes them.
        #expect(!harness.client.isActive)
        #expect(!harness.server.isActive)
        #expect(harness.finishedReasons == [.completed])
    }

    @Test("a direction stuck with data for the stall timeout aborts the bridge")
    func stall() throws {
        var configuration = BridgeConfiguration()
        configuration.stallTimeout = .seconds(2)
        let harness = try BridgeHarness(configuration: configuration)
        try harness.activate()
        try harness.connect()
        harness.receiveButHold("stuck", from: .client)
        harness.advanceTime(by: .seconds(1))
        #expect(harness.finishedReasons.isEmpty)
        harness.advanceTime(by: .seconds(2))
        #expect(harness.finishedReasons == [.stallTimeout])
    }

    @Test("an idle bridge is closed after the idle timeout, and traffic postpones it")
    func idle() throws {
        var configuration = BridgeConfiguration()
        configuration.stallTimeout = nil
        configuration.idleTimeout = .seconds(4)
        let harness = try BridgeHarness(configuration: configuration)
        try harness.activate()
        try harness.connect()
        harness.advanceTime(by: .seconds(3))
        try harness.receive("still here", from: .server)
        harness.advanceTime(by: .seconds(3))
        #expect(harness.finishedReasons.isEmpty)
        harness.advanceTime(by: .seconds(3))
        #expect(harness.finishedReasons == [.idleTimeout])
    }

    @Test("without an idle timeout a quiet bridge stays open")
    func noIdleTimeout() throws {
        let harness = try BridgeHarness()
        try harness.activate()
        try harness.connect()
        try harness.receive("x", from: .client)
        _ = try harness.written(to: .server)
        harness.advanceTime(by: .seconds(3600))
        #expect(harness.finishedReasons.isEmpty)
        #expect(harness.client.isActive)
    }
}

@Suite("Bridge handler: ends while connecting")
struct BridgeHandlerConnectingTests {
    @Test("a client reset while connecting abandons the pending server connection at once and reports the bridge")
    func clientResetAbandonsConnect() throws {
        let harness = try BridgeHarness()
        try harness.activate()
        try harness.receive("doomed", from: .client)
        let serverClosed = ReasonBox()
        harness.server.closeFuture.whenComplete { _ in serverClosed.reasons.append(.clientReset) }
        harness.error(on: .client)
        #expect(!harness.client.isActive)
        #expect(!serverClosed.reasons.isEmpty, "the pending server connection is closed, not left to finish or time out")
        #expect(try harness.written(to: .server) == "", "nothing of a reset client is delivered")
        #expect(harness.finishedReasons == [.clientReset])
    }

    @Test("--splice always on channels that are not sockets: the handover finds no descriptor and the bridge stays on NIO")
    func spliceAlwaysWithoutSockets() throws {
        var configuration = BridgeConfiguration()
        configuration.splice = .always
        let harness = try BridgeHarness(configuration: configuration)
        try harness.activate()
        try harness.receive("early", from: .client)
        try harness.connect()
        #expect(try harness.written(to: .server) == "early")
        #expect(harness.readReaches(.client), "reads go on after the failed handover")
        #expect(harness.readReaches(.server))
        try harness.receive("ping", from: .client)
        #expect(try harness.written(to: .server) == "ping")
        try harness.receive("pong", from: .server)
        #expect(try harness.written(to: .client) == "pong")
        harness.inputClosed(on: .client)
        #expect(harness.serverRecorder.outputShutdowns == 1, "EOF is still passed on")
    }

    @Test("--splice auto: bulk reads trigger a handover; when it cannot happen every byte is still forwarded in order")
    func spliceAutoFallsBack() throws {
        let harness = try BridgeHarness()
        try harness.activate()
        try harness.connect()
        var expected = ""
        for index in 0..<20 {
            let chunk = String(repeating: Character(UnicodeScalar(UInt8(65 + index))), count: 65536)
            expected += chunk
            try harness.receive(chunk, from: .client)
        }
        #expect(try harness.written(to: .server) == expected)
        #expect(harness.readReaches(.client))
    }
}
