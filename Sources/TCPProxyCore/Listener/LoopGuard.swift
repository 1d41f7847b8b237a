import CTCPProxyLinux
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Decides whether an intercepted connection would come straight back to the proxy (SPEC §3: "a
/// connection whose original destination is the proxy's own listener is refused").
///
/// Forwarding such a connection would make the proxy connect to itself, which the firewall may intercept
/// again, and so on until descriptors run out. It happens when a client connects to the proxy's port
/// directly, or when the interception rules also catch traffic addressed to the proxy.
struct LoopGuard: Sendable {
    /// The address the listener is bound to.
    var listener: IPEndpoint

    /// Whether `destination` is this listener: the same port, and the listener's address, or, for a
    /// listener on `0.0.0.0` (IPv4) or `::` (IPv4 and IPv6), any address of this host.
    /// - Parameters:
    ///   - destination: the connection's original destination.
    ///   - isLocalAddress: whether an address belongs to this host; asked only when the port matches a
    ///     wildcard listener.
    func isLoop(_ destination: IPEndpoint, isLocalAddress: (IPEndpoint) -> Bool) -> Bool {
        guard destination.port == self.listener.port else { return false }
        guard self.listener.isUnspecified else {
            // A connect to `0.0.0.0` or `::` reaches this host's loopback address.
            return destination.address == self.listener.address || (destination.isUnspecified && self.listener.isLoopback)
        }
        // A `0.0.0.0` listener takes IPv4 only; `::` is dual-stack on Linux by default.
        if self.listener.isIPv4 && !destination.isIPv4 { return false }
        return destination.isUnspecified || destination.isLoopback || isLocalAddress(destination)
    }

    /// Whether `address` belongs to this host (in the proxy's network namespace). Runs only for connections
    /// to the listener's own port, so it may make system calls.
    ///
    /// The kernel's routing decides (`ip route get`: "local"), which also covers addresses that a `local`
    /// route makes the host's (AnyIP, `ip route add local 10.88.0.0/24 dev lo`) without any interface
    /// carrying them. The interface list is asked as well: it knows IPv6 link-local addresses, whose route
    /// depends on an interface the original destination does not name.
    static func isLocalAddress(_ address: IPEndpoint) -> Bool {
        let routed = address.address.withUnsafeBytes { bytes in
            CTCPProxyLinux_routeIsLocal(address.isIPv4 ? AF_INET : AF_INET6, bytes.baseAddress, CInt(bytes.count))
        }
        return routed == 1 || self.isOnInterface(address)
    }

    /// Whether `address` is assigned to one of this host's interfaces.
    private static func isOnInterface(_ address: IPEndpoint) -> Bool {
        guard let devices = try? System.enumerateDevices() else { return false }
        return devices.contains { device in
            device.address.flatMap(IPEndpoint.init)?.address == address.address
        }
    }
}
