import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Finds the file descriptor of a NIO socket channel, which NIO does not expose.
///
/// NIOPosix keeps it at `SocketChannel` → `socket` (declared in `BaseSocketChannel`) → `descriptor`
/// (declared in `BaseSocket`); reflection reads it there. Anything unexpected (another NIO layout, a
/// channel that is not a socket, an `EmbeddedChannel`) gives `nil`, and a descriptor is only returned
/// when the kernel confirms it: its local and peer addresses must be the channel's. The bridge then
/// stays on the NIO path, so a NIO upgrade can cost speed but never correctness.
enum ChannelDescriptor {
    /// The channel's socket descriptor, confirmed, or `nil`. Call on the channel's event loop.
    static func descriptor(of channel: Channel) -> CInt? {
        guard let socket = self.property(named: "socket", of: channel),
            let descriptor = self.property(named: "descriptor", of: socket) as? CInt,
            descriptor >= 0,
            let local = channel.localAddress, let remote = channel.remoteAddress,
            SocketAddress(descriptor: descriptor, peer: false) == local,
            SocketAddress(descriptor: descriptor, peer: true) == remote
        else { return nil }
        return descriptor
    }

    /// A stored property of `value` or of one of its superclasses, by name.
    private static func property(named name: String, of value: Any) -> Any? {
        var mirror: Mirror? = Mirror(reflecting: value)
        for _ in 0..<8 {
            guard let current = mirror else { return nil }
            if let child = current.children.first(where: { $0.label == name }) {
                return child.value
            }
            mirror = current.superclassMirror
        }
        return nil
    }

    /// A duplicate of `descriptor` (close-on-exec) that keeps the socket open after NIO closes its own.
    static func duplicate(_ descriptor: CInt) -> CInt? {
        let copy = fcntl(descriptor, F_DUPFD_CLOEXEC, 0)
        return copy >= 0 ? copy : nil
    }
}
