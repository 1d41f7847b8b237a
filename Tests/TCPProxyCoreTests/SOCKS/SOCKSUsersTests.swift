import Foundation
import Testing

@testable import TCPProxyCore

@Suite("SOCKS users file")
struct SOCKSUsersTests {
    func credentials(_ user: String, _ password: String) -> SOCKS5Credentials {
        SOCKS5Credentials(username: ascii(user), password: ascii(password))
    }

    @Test("reads user:password lines, skipping blanks and comments; a password may hold ':'; CRLF works")
    func parses() throws {
        let users = try SOCKSUsers(parsing: "# users\r\nalice:s3cret\r\n\r\n   \nbob:pa:ss\n")
        #expect(users.count == 2)
        #expect(users.authenticate(self.credentials("alice", "s3cret")))
        #expect(users.authenticate(self.credentials("bob", "pa:ss")))
        #expect(!users.authenticate(self.credentials("alice", "s3cre")))
        #expect(!users.authenticate(self.credentials("alice", "s3cret ")))
        #expect(!users.authenticate(self.credentials("eve", "s3cret")))
        #expect(!users.authenticate(self.credentials("", "")))
    }

    @Test("a UTF-8 byte-order mark at the start of the file is not part of the first user's name")
    func byteOrderMark() throws {
        let path = NSTemporaryDirectory() + "tcpproxy-users-bom-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try Data([0xEF, 0xBB, 0xBF] + Array("alice:s3cret\n".utf8)).write(to: URL(fileURLWithPath: path))
        let users = try SOCKSUsers(contentsOfFile: path)
        #expect(users.authenticate(self.credentials("alice", "s3cret")))
    }

    @Test(
        "a bad line is an error naming it",
        arguments: [
            ("alice:x\nbob\n", 2, "expected user:password"),
            (":nopass\n", 1, "the user name must be 1 to 255 bytes"),
            ("alice:\n", 1, "the password must be 1 to 255 bytes"),
            ("a:1\n" + String(repeating: "u", count: 256) + ":p\n", 2, "the user name must be 1 to 255 bytes"),
            ("alice:1\nalice:2\n", 2, "user 'alice' appears twice"),
        ] as [(String, Int, String)]
    )
    func badLine(text: String, line: Int, reason: String) {
        #expect(throws: SOCKSUsersError(path: "users.txt", line: line, reason: reason)) {
            try SOCKSUsers(parsing: text, path: "users.txt")
        }
        #expect("\(SOCKSUsersError(path: "users.txt", line: line, reason: reason))" == "cannot use users file 'users.txt': line \(line): \(reason)")
    }

    @Test("a file with no user, or that cannot be read, is an error")
    func emptyOrMissing() throws {
        #expect(throws: SOCKSUsersError(path: "-", line: nil, reason: "no users in the file")) { try SOCKSUsers(parsing: "# none\n\n") }
        #expect(throws: SOCKSUsersError(path: "/nonexistent/users", line: nil, reason: "no such file or directory")) {
            try SOCKSUsers(contentsOfFile: "/nonexistent/users")
        }
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("socks-users-\(getpid()).txt").path
        try "carol:pw\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(try SOCKSUsers(contentsOfFile: path).authenticate(self.credentials("carol", "pw")))
    }

    @Test("a file with bytes that are not UTF-8 is refused at their line; UTF-8 names and passwords work")
    func notUTF8() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("socks-users-\(getpid())-latin1.txt").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try Data(Array("# users\nhi:ok\r\n".utf8) + [0x6C, 0x61, 0x74, 0xE9] + Array(":pw\n".utf8)).write(to: URL(fileURLWithPath: path))
        #expect(throws: SOCKSUsersError(path: path, line: 3, reason: "not valid UTF-8 (write names and passwords in UTF-8)")) {
            try SOCKSUsers(contentsOfFile: path)
        }
        try Data("hi:ok\nlaté:pwé\n".utf8).write(to: URL(fileURLWithPath: path))
        let users = try SOCKSUsers(contentsOfFile: path)
        #expect(users.authenticate(self.credentials("laté", "pwé")))
        #expect(!users.authenticate(self.credentials("laté", "pw")))
    }
}
