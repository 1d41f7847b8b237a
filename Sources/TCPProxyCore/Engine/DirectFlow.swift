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

/// The system calls one direction of a spliced bridge makes, so that ``DirectFlow``'s rules can be
/// tested without sockets. ``SpliceDirectionIO`` is the real one.
protocol FlowIO {
    /// Moves up to `count` bytes from the source socket into the pipe.
    func fill(max count: Int) -> FlowStep
    /// Moves up to `count` bytes from the pipe into the sink socket.
    func drain(max count: Int) -> FlowStep
    /// Shuts down writing to the sink socket (`SHUT_WR`); returns `errno` on failure.
    func shutdownSink() -> CInt?
}

/// One direction of a spliced bridge: source socket → pipe → sink socket (SPEC §2, without I/O).
///
/// The pipe is the direction's whole buffer. The flow never asks the source for more than the pipe has
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

    /// Most bytes the pipe may hold: the high-water mark, or the pipe's capacity if that is smaller.
    let capacity: Int
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

    /// EOF passed on and nothing left to write: this direction is done.
    var isFinished: Bool { self.sourceEnded && self.sinkShut }

    /// Moves bytes until nothing more can move, or until `rounds` read-and-write rounds have run.
    ///
    /// Each round reads what the pipe has room for, then writes what the pipe holds. Edge-triggered
    /// readiness is only re-armed by `EAGAIN`, so a pump that stops for any other reason reports
    /// ``Outcome/yielded`` and must be run again.
    mutating func pump(_ io: some FlowIO, rounds: Int = 16) -> Outcome {
        for _ in 0..<rounds {
            var progress = false
            if !self.sourceEnded && self.held < self.capacity {
                switch io.fill(max: self.capacity - self.held) {
                case .moved(let count):
                    self.held += count
                    self.moved &+= UInt64(count)
                    progress = true
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
                switch io.drain(max: self.held) {
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
                if io.shutdownSink() != nil { return .sinkFailed }
                self.sinkShut = true
            }
            if !progress { return .blocked }
        }
        return .yielded
    }
}
