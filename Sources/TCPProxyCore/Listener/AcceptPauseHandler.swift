import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Pauses accepting for a moment when the process runs out of descriptors or memory for new sockets.
///
/// `accept(2)` failing with `EMFILE` leaves the client in the listen queue, so the listening socket
/// stays readable; left alone the event loop would retry at once, forever, spinning a core. Turning
/// `autoRead` off unregisters the listener; it is turned on again after ``pause``, so accepting resumes
/// by itself once bridges close. Open bridges are untouched; waiting clients stay queued in the kernel.
/// The warning is logged once per episode (``AcceptExhaustion``).
/// (`ServerBootstrap.bind` installs no `AcceptBackoffHandler`, and that one could not stop the loop:
/// the listener's pending read survives a failed accept.)
final class AcceptPauseHandler: ChannelInboundHandler {
    typealias InboundIn = Any

    /// How long accepting pauses after a failure that more time can cure.
    static let pause = TimeAmount.milliseconds(100)

    private let logger: Logger
    private var resume: Scheduled<Void>?
    private var exhaustion = AcceptExhaustion()

    init(logger: Logger) {
        self.logger = logger
    }

    /// Whether `error` is an accept failure that passes once descriptors or memory are freed.
    static func isExhaustion(_ error: Error) -> Bool {
        guard let error = error as? IOError else { return false }
        return [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(error.errnoCode)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard Self.isExhaustion(error) else {
            context.fireErrorCaught(error)
            return
        }
        guard self.resume == nil else { return }
        if self.exhaustion.failed(at: .now()) {
            self.logger.warning(
                "cannot accept, pausing",
                metadata: ["error": "\(SystemErrorText.describe(error))", "pause": "\(Self.pause)"]
            )
        }
        try? context.channel.syncOptions?.setOption(.autoRead, value: false)
        let channel = context.channel
        self.resume = context.eventLoop.assumeIsolated().scheduleTask(in: Self.pause) {
            self.resume = nil
            try? channel.syncOptions?.setOption(.autoRead, value: true)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if self.exhaustion.isOngoing, let failures = self.exhaustion.succeeded(at: .now()) {
            self.logger.info("accepting again", metadata: ["failed.accepts": "\(failures)"])
        }
        context.fireChannelRead(data)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.resume?.cancel()
        self.resume = nil
    }
}

@available(*, unavailable)
extension AcceptPauseHandler: Sendable {}
