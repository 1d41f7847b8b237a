import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Many bridges at once on the direct engine, so that polls find several readable sockets and the engine batches
/// their reads and writes through io_uring (docs/BRIDGE.md, "Batched reads and writes"); with `--io-uring off`
/// the same load takes one call each. Every byte is checked.
@Suite("Direct engine under concurrent load (batched reads and writes)", .ownThread)
struct BatchedIOTests {
    @Test(
        "32 bridges, 30 rounds of 1 B to 40 KiB on every bridge before any echo is read, then half-closes: all in order",
        arguments: [DataPath.direct, .directSyscalls]
    )
    func concurrentEchoes(path: DataPath) async throws {
        let server = try TestServer(handler: TestServer.echo)
        defer { server.stop() }
        let proxy = try await ProxyProcess.forward(to: server.port, path.arguments)
        defer { proxy.kill() }
        let clients = try (0..<32).map { _ in try TestSocket.connect(port: proxy.port) }
        defer { clients.forEach { $0.close() } }

        for round in 0..<30 {
            // Mostly request-sized messages; one in four larger than a batch slice (16 KiB), so that full slices
            // are topped up and echoes of several slices interleave with small ones. Sizes vary by round and
            // bridge, the same every run.
            let messages = clients.indices.map { index in
                let mix = round &* 7919 &+ index &* 104_729
                let size = (round + index) % 4 == 0 ? 16_000 + mix % 24_000 : 1 + mix % 400
                return (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ round &* 7 &+ index &* 13) }
            }
            for (client, message) in zip(clients, messages) { try client.send(message) }
            for (index, (client, message)) in zip(clients, messages).enumerated() {
                let echoed = try client.recvExactly(message.count, timeout: 10)
                #expect(echoed == message, "round \(round), bridge \(index): \(message.count) bytes")
            }
        }
        for client in clients { client.shutdownWrite() }
        for (index, client) in clients.enumerated() {
            let rest = try client.readToEnd(timeout: 10)
            #expect(rest.bytes.isEmpty && rest.end == .eof, "bridge \(index): \(rest.bytes.count) bytes, \(rest.end)")
        }
        let closed = await proxy.waitForLines(containing: "bridge closed", count: clients.count, timeout: 10)
        #expect(closed != nil, "every bridge ended cleanly:\n\(proxy.stderr)")
    }
}
