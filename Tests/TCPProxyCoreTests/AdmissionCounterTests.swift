import Dispatch
import NIOConcurrencyHelpers
import NIOCore
import Testing

@testable import TCPProxyCore

@Suite("Admission counter")
struct AdmissionCounterTests {
    @Test("admits up to the limit, refuses above it, and admits again after a release")
    func limit() throws {
        let counter = AdmissionCounter()
        let policy = AdmissionPolicy(maxConnections: 2)
        let client = try SocketAddress(ipAddress: "127.0.0.1", port: 1)
        #expect(counter.admit(policy, address: client) == .admit)
        #expect(counter.admit(policy, address: client) == .admit)
        #expect(counter.admit(policy, address: client) == .limitReached)
        #expect(counter.count == 2)
        counter.release()
        #expect(counter.admit(policy, address: client) == .admit)
        #expect(counter.count == 2)
        #expect(counter.admit(AdmissionPolicy(), address: nil) == .admit, "no limit, no address (a demux stream)")
        #expect(counter.count == 3)
    }

    @Test("a refused client claims no slot")
    func refusedClaimsNothing() throws {
        let counter = AdmissionCounter()
        let policy = AdmissionPolicy(allow: [try CIDR(parsing: "10.0.0.0/8")])
        #expect(counter.admit(policy, address: try SocketAddress(ipAddress: "127.0.0.1", port: 1)) == .notAllowed)
        #expect(counter.count == 0)
    }

    @Test("clients admitted at once from many threads never exceed the limit")
    func concurrent() throws {
        let counter = AdmissionCounter()
        let policy = AdmissionPolicy(maxConnections: 50)
        let client = try SocketAddress(ipAddress: "127.0.0.1", port: 1)
        let admitted = NIOLockedValueBox(0)
        DispatchQueue.concurrentPerform(iterations: 2000) { _ in
            if counter.admit(policy, address: client) == .admit {
                admitted.withLockedValue { $0 += 1 }
            }
        }
        #expect(admitted.withLockedValue { $0 } == 50)
        #expect(counter.count == 50)
    }
}
