#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// What one splice(2) call (or a socket shutdown) did.
enum FlowStep: Equatable {
    /// This many bytes moved (more than 0).
    case moved(Int)
    /// Nothing can move now (`EAGAIN`): the socket has no data, or no room, or the pipe is full.
    case wouldBlock
    /// The source socket's peer sent EOF (splice returned 0).
    case endOfStream
    /// The call failed with this `errno` (a reset, a broken pipe).
    case failed(CInt)
}

extension FlowStep {
    /// What a call that failed with `error` means for a flow: `EAGAIN` (and `EINTR`) is would-block, anything
    /// else a failure.
    init(error: CInt) {
        self = error == EAGAIN || error == EWOULDBLOCK || error == EINTR ? .wouldBlock : .failed(error)
    }
}

/// The system calls one direction of a spliced bridge makes, so that ``DirectFlow``'s rules can be
/// tested without sockets. ``SpliceDirectionIO`` is the real one.
protocol FlowIO {
    /// Moves up to `count` bytes from the source socket into the pipe.
    func fill(max count: Int) -> FlowStep
    /// Moves up to `count` bytes from the pipe into the sink socket.
    ///
    /// `finishing` says the source has ended: once these bytes are written, the sink is shut down (or
    /// closed) at once. The write then lets the kernel hold its last part back (`MSG_MORE`), so that the
    /// FIN leaves in the same segment instead of one of its own (the shutdown or close pushes it out).
    func drain(max count: Int, finishing: Bool) -> FlowStep
    /// Shuts down writing to the sink socket (`SHUT_WR`); returns `errno` on failure.
    func shutdownSink() -> CInt?
}

/// One direction of a direct-engine bridge: source socket → buffer (a pipe, or user-space memory) → sink
/// socket (SPEC §2, without I/O).
///
/// The buffer is all the direction holds. The flow never asks the source for more than the buffer has
/// room for, so a sink that stops reading stops the source within `capacity` bytes (rule 4). EOF from the
/// source becomes `SHUT_WR` on the sink once the pipe is empty (rule 5).
struct DirectFlow: Equatable {
    /// What a ``pump(_:rounds:)`` ended with.
    enum Outcome: Equatable {
        /// Nothing more can move until the kernel reports readiness (every stop was `EAGAIN`, an empty
        /// pipe after EOF, or the end of the flow).
        case blocked
        /// More might move, but the round limit was reached: pump again after other bridges had a turn.
        case yielded
        /// Reading the source failed: that side reset.
        case sourceFailed
        /// Writing (or shutting down) the sink failed: that side reset or went away.
        case sinkFailed
    }

    /// Most bytes the buffer may hold: the high-water mark, or the pipe's capacity if that is smaller.
    private(set) var capacity: Int
    /// Bytes in the pipe: read from the source, not yet written to the sink.
    private(set) var held = 0
    /// Bytes read from the source since the bridge was spliced.
    private(set) var moved: UInt64 = 0
    /// The source sent EOF.
    private(set) var sourceEnded: Bool
    /// Writing to the sink has been shut down.
    private(set) var sinkShut: Bool

    /// - Parameters:
    ///   - capacity: the most bytes to hold.
    ///   - ended: the direction already ended on NIO (EOF read and the sink's output shut).
    init(capacity: Int, ended: Bool = false) {
        self.capacity = capacity
        self.sourceEnded = ended
        self.sinkShut = ended
    }

    /// The flow moves to a buffer of another size (copy → pipe), with nothing held.
    mutating func resize(_ capacity: Int) {
        precondition(self.held == 0, "a flow changes buffers only when it holds nothing")
        self.capacity = capacity
    }

    /// EOF passed on and nothing left to write: this direction is done.
    var isFinished: Bool { self.sourceEnded && self.sinkShut }

    /// Moves bytes until nothing more can move, or until `rounds` read-and-write rounds have run.
    ///
    /// Each round reads what the pipe has room for, then writes what the pipe holds. Edge-triggered
    /// readiness is only re-armed by `EAGAIN` (or a short read, with `stopAtShortRead`), so a pump that
    /// stops at the round limit with more to do reports ``Outcome/yielded`` and must be run again.
    ///
    /// With `stopAtShortRead`, a read that returns less than it asked for ends reading for this pump: the
    /// socket's receive queue was empty at that moment, so any later byte raises a new edge. (Not for
    /// splice, which also stops short when the pipe runs out of slots; not once the peer's FIN was seen,
    /// which a short read may leave unread without a new edge.)
    ///
    /// With `endAtShortRead` (the copy path, once an event reported the peer's FIN without an error), a
    /// short read is the end of the stream: after a FIN nothing more can arrive, so a read that did not
    /// fill its room emptied the socket for good, and the read that would return 0 is not made.
    ///
    /// With `closesSinkAtEnd` (the other direction has finished, so the bridge closes both sockets as soon
    /// as this one finishes too), EOF is passed on by that close(2), which sends the FIN after whatever
    /// the socket still has to send, as `shutdown(SHUT_WR)` would: the shutdown call is not made.
    mutating func pump(
        _ io: some FlowIO,
        rounds: Int = 16,
        stopAtShortRead: Bool = false,
        endAtShortRead: Bool = false,
        closesSinkAtEnd: Bool = false
    ) -> Outcome {
        var sourceDrained = false
        for _ in 0..<rounds {
            var progress = false
            if !self.sourceEnded && !sourceDrained && self.held < self.capacity {
                let room = self.capacity - self.held
                switch io.fill(max: room) {
                case .moved(let count):
                    self.held += count
                    self.moved &+= UInt64(count)
                    progress = true
                    if count < room {
                        if endAtShortRead {
                            self.sourceEnded = true
                        } else {
                            sourceDrained = stopAtShortRead
                        }
                    }
                case .endOfStream:
                    self.sourceEnded = true
                    progress = true
                case .wouldBlock:
                    break
                case .failed:
                    return .sourceFailed
                }
            }
            if self.held > 0 {
                switch io.drain(max: self.held, finishing: self.sourceEnded) {
                case .moved(let count):
                    self.held -= count
                    progress = true
                case .wouldBlock, .endOfStream:
                    break
                case .failed:
                    return .sinkFailed
                }
            }
            if self.sourceEnded && self.held == 0 && !self.sinkShut {
                if !closesSinkAtEnd, io.shutdownSink() != nil { return .sinkFailed }
                self.sinkShut = true
            }
            if !progress { return .blocked }
        }
        // The last round emptied the source for now and wrote all it read: another round would only make
        // the read that returns `EAGAIN`, and the next byte raises an edge of its own.
        if self.held == 0 && (self.sourceEnded || sourceDrained) { return .blocked }
        return .yielded
    }
}
