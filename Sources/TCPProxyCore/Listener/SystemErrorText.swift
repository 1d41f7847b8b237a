import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Turns system errors into the short lowercase phrases a user reads (`address already in use`).
public enum SystemErrorText {
    /// One line for `error`: the `strerror` text for an `IOError`, lowercased; the error's own
    /// description otherwise.
    public static func describe(_ error: Error) -> String {
        if let error = error as? IOError {
            return String(cString: strerror(error.errnoCode)).lowercased()
        }
        if let error = error as? SocketAddressError {
            switch error {
            case .unknown(let host, _): return "cannot resolve host '\(host)'"
            default: return "\(error)"
            }
        }
        if let error = error as? SocketAddressError.UnknownHost {
            // getaddrinfo's own words ("name or service not known"), lowercased like strerror's.
            return "cannot resolve host '\(error.host)': \(error.errorDescription.lowercased())"
        }
        if let error = error as? NIOConnectionError {
            if let last = error.connectionErrors.last { return describe(last.error) }
            if error.dnsAError != nil || error.dnsAAAAError != nil { return "cannot resolve host '\(error.host)'" }
            return "no address for host '\(error.host)'"
        }
        if case ChannelError.connectTimeout(let amount) = error {
            return connectTimedOut(after: amount)
        }
        return "\(error)"
    }

    /// A connect that `--connect-timeout` gave up, the same on every engine (`… after 1500 ms`).
    public static func connectTimedOut(after timeout: TimeAmount) -> String {
        "connection timed out after \(timeout)"
    }
}
