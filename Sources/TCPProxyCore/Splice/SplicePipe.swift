import CTCPProxyLinux

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// One direction's buffer on the splice path: a kernel pipe, non-blocking, sized to the high-water mark.
struct SplicePipe {
    /// The read end.
    let output: CInt
    /// The write end.
    let input: CInt
    /// Bytes the pipe can hold, as the kernel sized it.
    let capacity: Int

    /// The smallest pipe worth splicing through. Past the user's pipe-buffer quota
    /// (`/proc/sys/fs/pipe-user-pages-soft`) the kernel hands out one- or two-page pipes and refuses to
    /// grow them; such a bridge stays on NIO.
    static let minimumCapacity = 16 * 1024

    /// A pipe of at least `size` bytes if the system allows, else `nil` (descriptors exhausted, pipe
    /// quota used up): the caller stays on the NIO path.
    static func make(size: Int) -> SplicePipe? {
        var fds: [CInt] = [-1, -1]
        let capacity = CTCPProxyLinux_pipe(&fds, CInt(clamping: size))
        guard capacity >= 0 else { return nil }
        let pipe = SplicePipe(output: fds[0], input: fds[1], capacity: Int(capacity))
        guard pipe.capacity >= min(size, Self.minimumCapacity) else {
            pipe.close()
            return nil
        }
        return pipe
    }

    func close() {
        closeDescriptor(self.output)
        closeDescriptor(self.input)
    }
}

/// The real ``FlowIO`` of one direction: splice(2) between a socket and a pipe, both non-blocking.
struct SpliceDirectionIO: FlowIO {
    let source: CInt
    let pipe: SplicePipe
    let sink: CInt
    /// The source has sent urgent data (`EPOLLPRI`).
    var urgent = false
    /// The room a fill is offered when the pipe is empty (the flow's capacity).
    var emptyRoom = 0

    /// splice(2) stops at a TCP urgent mark for good: it returns `EAGAIN` there, or 0 once the peer's FIN has
    /// come, bytes after the mark or not (and the 0 can come before the event that reports the urgent data).
    /// So a 0 is believed only from read(2): with the pipe empty, one read(2), which skips the urgent byte,
    /// moves what follows the mark into the pipe or returns 0 at the real end; with bytes in the pipe, they
    /// are written first. An `EAGAIN`, the usual answer of a drained socket, takes the same read only from
    /// a source known to send urgent data.
    func fill(max count: Int) -> FlowStep {
        let result = CTCPProxyLinux_splice(self.source, self.pipe.input, count, 0)
        guard result == 0 || (self.urgent && result < 0 && errno == EAGAIN) else { return Self.step(result) }
        guard count == self.emptyRoom else { return .wouldBlock }
        return Self.step(CTCPProxyLinux_readPastMark(self.source, self.pipe.input, count))
    }

    func drain(max count: Int, finishing: Bool) -> FlowStep {
        Self.step(CTCPProxyLinux_splice(self.pipe.output, self.sink, count, finishing ? 1 : 0))
    }

    func shutdownSink() -> CInt? {
        shutdown(self.sink, CInt(SHUT_WR)) == 0 ? nil : errno
    }

    private static func step(_ result: Int) -> FlowStep {
        if result > 0 { return .moved(result) }
        return result == 0 ? .endOfStream : FlowStep(error: errno)
    }
}

/// close(2), for types that have a `close()` of their own (``CaptureWriter``, ``SplicePipe``).
func closeDescriptor(_ descriptor: CInt) {
    _ = close(descriptor)
}
