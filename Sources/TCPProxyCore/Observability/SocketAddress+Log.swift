import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension SocketAddress {
    /// `127.0.0.1:8080`, `[::1]:8080` or `[fe80::1%eth0]:8080`: how logs show an address.
    var logDescription: String {
        guard let host = self.ipAddress else { return "\(self)" }
        let port = self.port ?? 0
        guard host.contains(":") else { return "\(host):\(port)" }
        if case .v6(let address) = self, address.address.sin6_scope_id != 0 {
            return "[\(host)%\(interfaceName(index: address.address.sin6_scope_id))]:\(port)"
        }
        return "[\(host)]:\(port)"
    }
}

/// The name of the interface with this index (`eth0`), or the index itself if none has it: how an IPv6
/// link-local address's scope is written (`fe80::1%eth0`).
func interfaceName(index: UInt32) -> String {
    var name = [CChar](repeating: 0, count: Int(IF_NAMESIZE) + 1)
    guard if_indextoname(index, &name) != nil else { return String(index) }
    return String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

extension Optional where Wrapped == SocketAddress {
    /// The address for logs, `?` when the kernel could not tell.
    var logDescription: String { self.map(\.logDescription) ?? "?" }
}
