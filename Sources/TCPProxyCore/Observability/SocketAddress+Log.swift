import NIOCore

extension SocketAddress {
    /// `127.0.0.1:8080` or `[::1]:8080`: how logs show an address.
    var logDescription: String {
        guard let host = self.ipAddress else { return "\(self)" }
        let port = self.port ?? 0
        return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}

extension Optional where Wrapped == SocketAddress {
    /// The address for logs, `?` when the kernel could not tell.
    var logDescription: String { self.map(\.logDescription) ?? "?" }
}
