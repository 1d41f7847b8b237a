import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The one home of raw socket options and process limits the engine uses beyond what NIO names.
enum LinuxSocketOptions {
    /// The start of Linux's `struct tcp_info`, up to and including `tcpi_bytes_acked` (offset 120).
    /// The kernel copies as much of the struct as we ask for.
    private struct TCPInfoPrefix: Sendable {
        var words: (
            UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
            UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64
        ) = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        /// `tcpi_bytes_acked`: the 16th 8-byte word.
        var bytesAcked: UInt64 { self.words.15 }
    }

    /// Bytes of this socket's output that the peer has acknowledged (`tcpi_bytes_acked`), or `nil` where
    /// the kernel cannot tell. Used only to judge stall progress, never on the data path.
    /// - Parameter channel: a connected TCP channel; must be called on its event loop.
    static func bytesAcknowledged(_ channel: Channel) -> UInt64? {
        #if os(Linux)
        guard let provider = channel as? SocketOptionProvider else { return nil }
        var result: UInt64?
        // In the event loop the future is already complete, so the callback runs before we return.
        let future: EventLoopFuture<TCPInfoPrefix> = provider.unsafeGetSocketOption(
            level: .init(rawValue: Int32(IPPROTO_TCP)),
            name: .init(rawValue: Int32(TCP_INFO))
        )
        future.assumeIsolated().whenSuccess { result = $0.bytesAcked }
        return result
        #else
        return nil
        #endif
    }

    /// Makes the next close of this channel send a reset instead of a FIN (`SO_LINGER` with a zero timeout).
    static func setResetOnClose(_ channel: Channel) {
        guard let provider = channel as? SocketOptionProvider else { return }
        _ = provider.setSoLinger(linger(l_onoff: 1, l_linger: 0))
    }

    /// Raises the soft limit on open files to the hard limit, so the proxy can hold as many bridges as the
    /// system allows. Returns the limit now in force.
    @discardableResult
    static func raiseOpenFileLimit() -> UInt64 {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { return UInt64(raised.rlim_cur) }
        }
        return UInt64(limit.rlim_cur)
    }
}
