import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Where an intercepted client meant to go (SPEC §3), by the same rules on the NIO bridge
/// (``TransparentStarter``) and on the direct engine (``DirectAcceptor``).
///
/// - `tproxy`: the accepted socket's local address *is* the original destination (TPROXY keeps it).
/// - `redirect`: the kernel's conntrack remembers it (`SO_ORIGINAL_DST`, `IP6T_SO_ORIGINAL_DST`).
enum OriginalDestination {
    /// The original destination of a client accepted at `local` from `remote`.
    /// - Parameters:
    ///   - interception: how the client was intercepted.
    ///   - local: the accepted socket's local address.
    ///   - remote: the client's address, if known.
    ///   - conntrack: reads conntrack's raw `struct sockaddr_in` (or `sockaddr_in6` when asked for IPv6).
    /// - Throws: what `conntrack` throws (`ENOENT`: not tracked), or ``Failure``.
    static func find(
        _ interception: TransparentConfiguration.Interception,
        local: IPEndpoint,
        remote: IPEndpoint?,
        conntrack: (_ ipv6: Bool) throws -> [UInt8]
    ) throws -> IPEndpoint {
        switch interception {
        case .tproxy:
            return local
        case .redirect:
            // An IPv4 client of a dual-stack listener has an IPv4-mapped local address: its conntrack entry
            // is IPv4, and `SOL_IP` works on that IPv6 socket.
            guard let destination = IPEndpoint(sockaddr: try conntrack(!local.isIPv4)) else { throw Failure.unreadable }
            // When the client's packets were not tracked (a NOTRACK rule), the proxy's own packets to the
            // client may start an entry, and what it gives as the original destination is the client itself.
            if let remote, remote.address == destination.address, remote.port == destination.port {
                throw Failure.reflected
            }
            // The kernel names the interface of a link-local destination when the client came from a
            // link-local address too; the accepted socket's addresses are the fallback.
            return destination.scoped(like: remote).scoped(like: local)
        }
    }

    /// An original destination that is none.
    enum Failure: Error, CustomStringConvertible {
        /// conntrack's entry began with the proxy's own packets, so it names the client as the destination.
        case reflected
        /// conntrack answered with an address of another family.
        case unreadable

        var description: String {
            switch self {
            case .reflected:
                "conntrack tracked this connection from the proxy's side only, not the client's packets: nothing redirected it"
            case .unreadable:
                "conntrack gave no IPv4 or IPv6 address"
            }
        }
    }

    /// `address` in the family of `local`: an IPv4 address as IPv4-mapped IPv6 (`::ffff:10.0.0.1`) for a
    /// dual-stack listener's IPv4 client, whose socket addresses (and so its PROXY header's) are IPv6.
    static func inFamily(of local: SocketAddress?, _ address: SocketAddress) -> SocketAddress {
        guard case .v6? = local, case .v4 = address, let ip = address.ipAddress, let port = address.port,
            let mapped = try? SocketAddress(ipAddress: "::ffff:\(ip)", port: port)
        else { return address }
        return mapped
    }

    /// Why the original destination could not be read, in words.
    static func describe(_ error: Error) -> String {
        if let error = error as? IOError, error.errnoCode == ENOENT {
            return "conntrack has no entry for this connection: nothing redirected it"
        }
        return SystemErrorText.describe(error)
    }
}

extension Logger {
    /// A transparent client turned away for want of an original destination (`noOriginalDestination`).
    func logNoOriginalDestination(client: SocketAddress?, error: Error) {
        self.warning(
            "connection rejected: no original destination",
            metadata: [
                "client.address": "\(client.logDescription)",
                "close.reason": "\(CloseReason.noOriginalDestination)",
                "error": "\(OriginalDestination.describe(error))",
            ]
        )
    }

    /// A transparent client whose original destination is the listener itself (`loopRefused`).
    func logLoopRefused(client: SocketAddress?, destination: IPEndpoint) {
        self.warning(
            "connection rejected: its original destination is this listener",
            metadata: [
                "client.address": "\(client.logDescription)",
                "close.reason": "\(CloseReason.loopRefused)",
                "original.destination": "\(destination)",
            ]
        )
    }
}
