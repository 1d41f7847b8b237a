import NIOCore

/// Closes a client that was turned away (`--allow`, `--max-connections`) as soon as it is active: it is
/// accepted and closed at once, as SPEC §1 says, without being closed before its channel is registered.
final class CloseOnActiveHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer

    func channelActive(context: ChannelHandlerContext) {
        context.close(promise: nil)
    }
}
