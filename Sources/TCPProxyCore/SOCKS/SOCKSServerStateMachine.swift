import NIOCore

/// The protocol a SOCKS client speaks, as logs and metrics name it.
enum SOCKSVersion: String, Hashable, Sendable, CaseIterable, CustomStringConvertible {
    case socks4 = "4"
    case socks4a = "4a"
    case socks5 = "5"

    var description: String { self.rawValue }
}

/// The server side of a SOCKS handshake, without I/O: it reads the client's bytes and says what to write and
/// when to connect (SPEC §3 socks).
///
/// SOCKS4 and SOCKS4a: one request, answered after the connect. SOCKS5: a greeting answered with a method,
/// RFC 1929 credentials when `--users` is set, then a request answered after the connect. The handler feeds
/// every byte it reads to ``receive(_:)`` until the answer is not ``Action/send(_:)``.
struct SOCKSServerStateMachine {
    /// A client's CONNECT, ready to be carried out.
    struct ConnectRequest: Hashable, Sendable {
        /// The protocol of the request, which also picks the format of the reply.
        var version: SOCKSVersion
        /// Where to connect.
        var destination: SOCKSDestination
        /// The user who logged in (SOCKS5 with `--users`), for logs.
        var user: String?
    }

    /// What the handler must do next.
    enum Action: Hashable {
        /// Read more bytes: the next message is not complete.
        case needMore
        /// Write this reply and go on reading (a SOCKS5 method selection or authentication success).
        case send(SOCKSReply)
        /// Connect to the destination; reply once the connection is up or failed. Bytes left in the buffer
        /// came after the request: they are the client's first data for the server.
        case connect(ConnectRequest)
        /// Write the error's reply, if it has one, then close.
        case fail(SOCKSError)
    }

    private enum State {
        /// Nothing read yet: the first byte says SOCKS4 or SOCKS5.
        case awaitingFirstMessage
        /// SOCKS5, username/password picked: waiting for the RFC 1929 credentials.
        case awaitingCredentials
        /// SOCKS5, authenticated (as `user` if there are users): waiting for the request.
        case awaitingRequest(user: String?)
        /// A request was read, or the handshake failed: nothing more is read.
        case finished
    }

    private var state: State = .awaitingFirstMessage
    private let users: SOCKSUsers?

    /// The version of the request, once one has been read in full (whether or not it is carried out).
    private(set) var requestVersion: SOCKSVersion?

    /// - Parameter users: the `--users` table; `nil` when clients need not log in.
    init(users: SOCKSUsers?) {
        self.users = users
    }

    /// Whether the handshake is over: a request was read, or it failed.
    var isFinished: Bool {
        if case .finished = self.state { return true }
        return false
    }

    /// Reads the next complete message from `buffer`, if there is one.
    /// - Parameter buffer: the bytes the client sent that are not consumed yet; complete messages are consumed.
    /// - Returns: what to do; after ``Action/connect(_:)`` and ``Action/fail(_:)`` the machine takes no more input.
    mutating func receive(_ buffer: inout ByteBuffer) -> Action {
        do {
            switch self.state {
            case .awaitingFirstMessage:
                guard let version = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return .needMore }
                switch version {
                case SOCKS4.version:
                    guard let request = try buffer.readSOCKS4Request() else { return .needMore }
                    return self.received(request)
                case SOCKS5.version:
                    guard let greeting = try buffer.readSOCKS5Greeting() else { return .needMore }
                    return self.received(greeting)
                default:
                    throw SOCKSError.unsupportedVersion(version)
                }

            case .awaitingCredentials:
                guard let credentials = try buffer.readSOCKS5Credentials() else { return .needMore }
                guard let users = self.users, users.authenticate(credentials) else {
                    throw SOCKSError.socks5AuthenticationFailed
                }
                self.state = .awaitingRequest(user: String(decoding: credentials.username, as: UTF8.self))
                return .send(.socks5AuthenticationStatus(succeeded: true))

            case .awaitingRequest(let user):
                guard let request = try buffer.readSOCKS5Request() else { return .needMore }
                self.state = .finished
                self.requestVersion = .socks5
                // RFC 1928 §6: X'07' Command not supported (BIND, UDP ASSOCIATE).
                guard request.command == .connect else { throw SOCKSError.socks5CommandNotSupported(request.command.value) }
                return .connect(ConnectRequest(version: .socks5, destination: request.destination, user: user))

            case .finished:
                preconditionFailure("receive in \(self.state)")
            }
        } catch let error as SOCKSError {
            self.state = .finished
            return .fail(error)
        } catch {
            // The parsers throw only SOCKSError; an address NIO would not build is garbage all the same.
            self.state = .finished
            return .fail(.unsupportedVersion(0))
        }
    }

    private mutating func received(_ request: SOCKS4Request) -> Action {
        self.state = .finished
        self.requestVersion = request.isSOCKS4a ? .socks4a : .socks4
        guard self.users == nil else { return .fail(.socks4AuthenticationRequired) }
        guard request.command == .connect else { return .fail(.socks4CommandNotSupported(request.command.value)) }
        return .connect(ConnectRequest(version: self.requestVersion!, destination: request.destination, user: nil))
    }

    private mutating func received(_ greeting: SOCKS5Greeting) -> Action {
        let wanted: SOCKS5AuthenticationMethod = self.users == nil ? .noneRequired : .usernamePassword
        guard greeting.methods.contains(wanted) else {
            self.state = .finished
            return .fail(.socks5NoAcceptableMethod)
        }
        self.state = self.users == nil ? .awaitingRequest(user: nil) : .awaitingCredentials
        return .send(.socks5MethodSelection(wanted))
    }
}
