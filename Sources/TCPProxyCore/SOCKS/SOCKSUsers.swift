#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The users of `--users FILE`: one `user:password` per line, for RFC 1929 username/password authentication.
///
/// Blank lines and lines starting with `#` are skipped; a password may contain `:` (the first one ends the
/// user name); CRLF line ends work too. User names and passwords are 1 to 255 bytes, as RFC 1929 carries
/// them. Anything else is an error naming the line, so a typo cannot silently lock users out or let them in.
public struct SOCKSUsers: Sendable, Hashable {
    /// Password by user name, both as bytes.
    private var passwords: [[UInt8]: [UInt8]]

    /// How many users there are.
    public var count: Int { self.passwords.count }

    /// The most bytes read from a users file.
    static let maximumFileSize = 1 << 20

    /// Parses the text of a users file.
    /// - Parameters:
    ///   - text: the file's contents.
    ///   - path: the file's name, for error messages.
    /// - Throws: ``SOCKSUsersError`` naming the first bad line, or saying there is no user at all.
    public init(parsing text: String, path: String = "-") throws {
        var passwords: [[UInt8]: [UInt8]] = [:]
        // A byte-order mark some editors put first is no part of the first user's name.
        let text = text.hasPrefix("\u{FEFF}") ? String(text.dropFirst()) : text
        // "\r\n" is one Character in Swift, so CRLF files split like LF ones.
        let lines = text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" })
        for (index, line) in lines.enumerated() {
            if line.allSatisfy({ $0 == " " || $0 == "\t" }) || line.hasPrefix("#") { continue }
            func fail(_ reason: String) -> SOCKSUsersError {
                SOCKSUsersError(path: path, line: index + 1, reason: reason)
            }
            guard let colon = line.firstIndex(of: ":") else { throw fail("expected user:password") }
            let user = Array(line[..<colon].utf8)
            let password = Array(line[line.index(after: colon)...].utf8)
            guard (1...255).contains(user.count) else { throw fail("the user name must be 1 to 255 bytes") }
            guard (1...255).contains(password.count) else { throw fail("the password must be 1 to 255 bytes") }
            guard passwords[user] == nil else { throw fail("user '\(line[..<colon])' appears twice") }
            passwords[user] = password
        }
        guard !passwords.isEmpty else { throw SOCKSUsersError(path: path, line: nil, reason: "no users in the file") }
        self.passwords = passwords
    }

    /// Reads and parses a users file.
    /// - Throws: ``SOCKSUsersError`` when the file cannot be read or parsed.
    public init(contentsOfFile path: String) throws {
        let bytes = try SOCKSUsers.readFile(path)
        // Read as text, bytes that are not UTF-8 would become U+FFFD: a password nobody can type, and the same
        // one for every such line.
        for (index, line) in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).enumerated()
        where String(validating: line, as: UTF8.self) == nil {
            throw SOCKSUsersError(path: path, line: index + 1, reason: "not valid UTF-8 (write names and passwords in UTF-8)")
        }
        try self.init(parsing: String(decoding: bytes, as: UTF8.self), path: path)
    }

    /// Whether `credentials` name a user and that user's password. Compares the whole password whatever
    /// its first wrong byte, so the time taken does not tell how much of a guess was right.
    func authenticate(_ credentials: SOCKS5Credentials) -> Bool {
        guard let expected = self.passwords[credentials.username] else { return false }
        guard expected.count == credentials.password.count else { return false }
        var difference: UInt8 = 0
        for (a, b) in zip(expected, credentials.password) { difference |= a ^ b }
        return difference == 0
    }

    private static func readFile(_ path: String) throws -> [UInt8] {
        do {
            return try TextFile.bytes(of: path, limit: Self.maximumFileSize)
        } catch {
            throw SOCKSUsersError(path: path, line: nil, reason: error.reason)
        }
    }
}

/// A `--users` file that cannot be used.
public struct SOCKSUsersError: Error, Hashable, CustomStringConvertible {
    /// The file.
    public var path: String
    /// The 1-based line at fault, if one is.
    public var line: Int?
    /// What is wrong, in a few lowercase words.
    public var reason: String

    public var description: String {
        "cannot use users file '\(self.path)': " + (self.line.map { "line \($0): " } ?? "") + self.reason
    }
}
