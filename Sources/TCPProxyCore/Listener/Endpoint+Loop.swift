#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension Endpoint {
    /// Whether connecting here would reach `listener` itself (a forward loop, which would send every client
    /// back into the listener until descriptors run out): the same port, and an address of this host that is
    /// the listener's, or, for a listener on every interface, any address of this machine (``LoopGuard``).
    ///
    /// Names are resolved (getaddrinfo, which blocks: for checks at start and reload), and only when the
    /// ports match, so a target on another port never waits for DNS. A name that does not resolve now is
    /// not a loop now.
    public func loops(into listener: Endpoint) -> Bool {
        self.loops(into: listener, resolve: Self.addresses(of:), isLocalAddress: LoopGuard.isLocalAddress)
    }

    /// ``loops(into:)`` with the name resolution and the local-address test given (for tests).
    func loops(into listener: Endpoint, resolve: (String) -> [[UInt8]], isLocalAddress: (IPEndpoint) -> Bool) -> Bool {
        guard self.port == listener.port, self.port != 0, let port = UInt16(exactly: self.port) else { return false }
        if self.host == listener.host { return true }
        let targets = resolve(self.host).map { IPEndpoint(address: $0, port: port) }
        guard !targets.isEmpty else { return false }
        return resolve(listener.host).contains { address in
            let guardrail = LoopGuard(listener: IPEndpoint(address: address, port: port))
            return targets.contains { guardrail.isLoop($0, isLocalAddress: isLocalAddress) }
        }
    }

    /// The IP addresses (4 or 16 bytes) `host` stands for: the address itself for a literal (`127.1` and
    /// other inet_aton forms too), else what getaddrinfo answers; none when it does not resolve.
    static func addresses(of host: String) -> [[UInt8]] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        #if canImport(Glibc)
        hints.ai_socktype = CInt(SOCK_STREAM.rawValue)
        #else
        hints.ai_socktype = SOCK_STREAM
        #endif
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &list) == 0, let first = list else { return [] }
        defer { freeaddrinfo(first) }
        var result: [[UInt8]] = []
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let current = entry {
            if let address = current.pointee.ai_addr {
                let bytes = Array(UnsafeRawBufferPointer(start: address, count: Int(current.pointee.ai_addrlen)))
                if let endpoint = IPEndpoint(sockaddr: bytes), !result.contains(endpoint.address) {
                    result.append(endpoint.address)
                }
            }
            entry = current.pointee.ai_next
        }
        return result
    }
}
