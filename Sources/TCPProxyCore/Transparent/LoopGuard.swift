import NIOCore
import NIOPosix

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
        guard self.listener.isUnspecified else { return destination.address == self.listener.address }
        // A `0.0.0.0` listener takes IPv4 only; `::` is dual-stack on Linux by default.
        if self.listener.isIPv4 && !destination.isIPv4 { return false }
        return destination.isUnspecified || destination.isLoopback || isLocalAddress(destination)
    }

    /// Whether `address` is assigned to one of this host's interfaces (in the proxy's network namespace).
    /// Reads the interface list each time: it runs only for connections to the listener's own port.
    static func isLocalAddress(_ address: IPEndpoint) -> Bool {
        guard let devices = try? System.enumerateDevices() else { return false }
        return devices.contains { device in
            device.address.flatMap(IPEndpoint.init)?.address == address.address
        }
    }
}
