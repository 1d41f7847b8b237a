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

    /// `tcpi_bytes_acked` of a raw socket (the splice engine's sockets, which NIO no longer holds), or `nil`.
    /// - Parameter descriptor: a connected TCP socket.
    static func bytesAcknowledged(descriptor: CInt) -> UInt64? {
        #if os(Linux)
        var info = TCPInfoPrefix()
        var length = socklen_t(MemoryLayout<TCPInfoPrefix>.size)
        guard getsockopt(descriptor, CInt(IPPROTO_TCP), CInt(TCP_INFO), &info, &length) == 0,
            Int(length) >= MemoryLayout<TCPInfoPrefix>.size
        else { return nil }
        return info.bytesAcked
        #else
        return nil
        #endif
    }

    /// Whether this TCP socket's output is still open: no FIN sent yet (state `ESTABLISHED` or
    /// `CLOSE_WAIT`, the first byte of `struct tcp_info`). `false` where the kernel cannot tell.
    static func outputOpen(descriptor: CInt) -> Bool {
        #if os(Linux)
        var info = TCPInfoPrefix()
        var length = socklen_t(MemoryLayout<TCPInfoPrefix>.size)
        guard descriptor >= 0, getsockopt(descriptor, CInt(IPPROTO_TCP), CInt(TCP_INFO), &info, &length) == 0 else {
            return false
        }
        let state = withUnsafeBytes(of: info) { $0[0] }
        return state == 1 || state == 8  // TCP_ESTABLISHED, TCP_CLOSE_WAIT
        #else
        return false
        #endif
    }

    /// Bytes waiting unread in a socket's receive queue (`FIONREAD`); 0 where unknown.
    static func unreadBytes(descriptor: CInt) -> Int {
        var count: CInt = 0
        guard descriptor >= 0, ioctl(descriptor, UInt(FIONREAD), &count) == 0 else { return 0 }
        return Int(count)
    }

    /// Whether closing `peer` now, at a timeout the peers did not ask for (``CloseReason/resetsCutStreams``),
    /// drops bytes pending at that moment: bytes from it (held by the proxy for its partner, `heldFrom`, or
    /// unread in its own socket, which close(2) answers with a reset anyway), or bytes for it while no FIN
    /// was sent to it yet (held by the proxy, `heldFor`, or unread in `partner`). Such a peer gets a reset,
    /// so it cannot take the cut for the stream's end; one with nothing pending gets a FIN. Bytes still on
    /// their way (in a peer's send queue, or in the network) are not seen.
    static func closingCutsStream(peer: CInt, partner: CInt, heldFor: Int, heldFrom: Int) -> Bool {
        if heldFrom > 0 || self.unreadBytes(descriptor: peer) > 0 { return true }
        guard self.outputOpen(descriptor: peer) else { return false }
        return heldFor > 0 || self.unreadBytes(descriptor: partner) > 0
    }

    /// Makes the next close of a raw socket send a reset instead of a FIN (`SO_LINGER` with a zero timeout).
    static func setResetOnClose(descriptor: CInt) {
        var value = linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(descriptor, SOL_SOCKET, SO_LINGER, &value, socklen_t(MemoryLayout<linger>.size))
    }

    /// Reads and drops what a raw socket holds, at most `limit` bytes, before it closes
    /// (``CloseReason/dropsClientInput``).
    /// - Returns: the bytes dropped.
    static func discardInput(descriptor: CInt, limit: Int = 64 * 1024) -> Int {
        var dropped = 0
        withUnsafeTemporaryAllocation(byteCount: 4096, alignment: 1) { buffer in
            while dropped < limit {
                let count = recv(descriptor, buffer.baseAddress, min(buffer.count, limit - dropped), CInt(MSG_DONTWAIT))
                guard count > 0 else { return }
                dropped += count
            }
        }
        return dropped
    }

    /// The same for a NIO channel that is not reading (call on its event loop); 0 where its socket is unknown.
    static func discardInput(_ channel: Channel) -> Int {
        guard let descriptor = ChannelDescriptor.descriptor(of: channel) else { return 0 }
        return self.discardInput(descriptor: descriptor)
    }

    /// The pending error of a raw socket (`SO_ERROR`, which reading clears), 0 for none.
    static func pendingError(descriptor: CInt) -> CInt {
        var value: CInt = 0
        var length = socklen_t(MemoryLayout<CInt>.size)
        guard getsockopt(descriptor, SOL_SOCKET, SO_ERROR, &value, &length) == 0 else { return errno }
        return value
    }

    /// `TCP_QUICKACK` (`IPPROTO_TCP`, 12, <linux/tcp.h>): 0 before `connect` holds the handshake's last ACK
    /// back for the first bytes to carry (``TCPServerConnector/holdsHandshakeACK``); 1 sends a held ACK now.
    static let quickAck = ChannelOptions.Types.SocketOption(level: .tcp, name: NIOBSDSocket.Option(rawValue: 12))

    /// Sends the ACK a connect held back now. Call on the channel's event loop.
    static func sendHeldACK(_ channel: Channel?) {
        #if os(Linux)
        try? channel?.syncOptions?.setOption(Self.quickAck, value: 1)
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

// MARK: Transparent proxying (docs/TRANSPARENT.md)

extension LinuxSocketOptions {
    /// `IP_TRANSPARENT` (`SOL_IP`, 19, <linux/in.h>) and `IPV6_TRANSPARENT` (`SOL_IPV6`, 75, <linux/in6.h>):
    /// the socket may accept connections addressed elsewhere (a TPROXY listener) and bind an address
    /// that is not local (`--spoof-source`). Both set the same flag; setting it needs CAP_NET_ADMIN
    /// (or CAP_NET_RAW), else `EPERM`. Set before `bind`.
    private static let ipTransparent = ChannelOptions.Types.SocketOption(
        level: NIOBSDSocket.OptionLevel(rawValue: 0),
        name: NIOBSDSocket.Option(rawValue: 19)
    )
    private static let ipv6Transparent = ChannelOptions.Types.SocketOption(
        level: NIOBSDSocket.OptionLevel(rawValue: 41),
        name: NIOBSDSocket.Option(rawValue: 75)
    )

    /// `SO_ORIGINAL_DST` (`SOL_IP`, 80, <linux/netfilter_ipv4.h>) and `IP6T_SO_ORIGINAL_DST` (`SOL_IPV6`, 80,
    /// <linux/netfilter_ipv6/ip6_tables.h>): the destination conntrack saw before a `REDIRECT`/`DNAT`
    /// rewrote it, as a `struct sockaddr_in` / `sockaddr_in6`. `ENOENT` when the connection is not tracked.
    private static let originalDestinationIPv4 = (
        level: NIOBSDSocket.OptionLevel(rawValue: 0),
        name: NIOBSDSocket.Option(rawValue: 80)
    )
    private static let originalDestinationIPv6 = (
        level: NIOBSDSocket.OptionLevel(rawValue: 41),
        name: NIOBSDSocket.Option(rawValue: 80)
    )

    /// The transparent option for a socket of `address`'s family, for `ClientBootstrap.channelOption`.
    static func transparentOption(for address: SocketAddress) -> ChannelOptions.Types.SocketOption {
        if case .v6 = address { return Self.ipv6Transparent }
        return Self.ipTransparent
    }

    /// Sets `IPV6_TRANSPARENT` or `IP_TRANSPARENT` on a socket whose family is not known yet (a listener
    /// before `bind`): IPv6 first, and IPv4 when the socket refuses the IPv6 level (`ENOPROTOOPT`).
    /// Must be called on the channel's event loop.
    /// - Throws: ``TransparentError/transparentNotPermitted(option:)`` without the privilege; the
    ///   system error otherwise.
    static func setTransparent(_ channel: Channel) throws {
        guard let options = channel.syncOptions else { throw ChannelError.operationUnsupported }
        do {
            try options.setOption(Self.ipv6Transparent, value: 1)
        } catch let error as IOError where error.errnoCode == ENOPROTOOPT || error.errnoCode == EOPNOTSUPP {
            do {
                try options.setOption(Self.ipTransparent, value: 1)
            } catch let error as IOError where error.errnoCode == EPERM {
                throw TransparentError.transparentNotPermitted(option: "IP_TRANSPARENT")
            }
        } catch let error as IOError where error.errnoCode == EPERM {
            throw TransparentError.transparentNotPermitted(option: "IPV6_TRANSPARENT")
        }
    }

    /// Checks, on a throwaway IPv4 socket, that this process may set `IP_TRANSPARENT` (for
    /// `--spoof-source` in `redirect` mode, whose listener does not need it).
    /// - Throws: ``TransparentError/transparentNotPermitted(option:)`` without the privilege.
    static func checkTransparentPermitted() throws {
        #if os(Linux)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var on: CInt = 1
        if setsockopt(fd, 0, 19, &on, socklen_t(MemoryLayout<CInt>.size)) != 0 && errno == EPERM {
            throw TransparentError.transparentNotPermitted(option: "IP_TRANSPARENT")
        }
        #endif
    }

    /// The raw `struct sockaddr_in` (or `sockaddr_in6` when `ipv6`) that `SO_ORIGINAL_DST`
    /// (`IP6T_SO_ORIGINAL_DST`) returns for an accepted connection; read it with ``IPEndpoint/init(sockaddr:)``.
    /// Must be called on the channel's event loop.
    /// - Throws: the system error (`ENOENT`: conntrack knows no such connection, so nothing redirected it).
    static func originalDestination(_ channel: Channel, ipv6: Bool) throws -> [UInt8] {
        guard let provider = channel as? SocketOptionProvider else { throw ChannelError.operationUnsupported }
        var result: Result<[UInt8], Error> = .failure(ChannelError.operationUnsupported)
        // In the event loop the future is already complete, so the callback runs before we return.
        if ipv6 {
            let future: EventLoopFuture<sockaddr_in6> = provider.unsafeGetSocketOption(
                level: Self.originalDestinationIPv6.level,
                name: Self.originalDestinationIPv6.name
            )
            future.assumeIsolated().whenComplete { result = $0.map(Self.bytes(of:)) }
        } else {
            let future: EventLoopFuture<sockaddr_in> = provider.unsafeGetSocketOption(
                level: Self.originalDestinationIPv4.level,
                name: Self.originalDestinationIPv4.name
            )
            future.assumeIsolated().whenComplete { result = $0.map(Self.bytes(of:)) }
        }
        return try result.get()
    }

    /// ``originalDestination(_:ipv6:)`` for a socket the direct engine accepted.
    static func originalDestination(descriptor: CInt, ipv6: Bool) throws -> [UInt8] {
        var storage = sockaddr_in6()
        var length = socklen_t(ipv6 ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size)
        let level = ipv6 ? Self.originalDestinationIPv6.level.rawValue : Self.originalDestinationIPv4.level.rawValue
        let name = ipv6 ? Self.originalDestinationIPv6.name.rawValue : Self.originalDestinationIPv4.name.rawValue
        guard getsockopt(descriptor, level, name, &storage, &length) == 0 else {
            throw IOError(errnoCode: errno, reason: "getsockopt(SO_ORIGINAL_DST)")
        }
        return withUnsafeBytes(of: storage) { Array($0.prefix(Int(length))) }
    }

    /// The bytes of a C struct, as the kernel wrote them.
    private static func bytes<Value>(of value: Value) -> [UInt8] {
        withUnsafeBytes(of: value) { Array($0) }
    }
}
