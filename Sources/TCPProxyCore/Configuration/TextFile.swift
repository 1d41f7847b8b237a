#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Small configuration files (`--users`, `run CONFIG.yaml`), read whole with the C library: Foundation is
/// not linked.
enum TextFile {
    /// Why a file could not be read, in a few lowercase words (`no such file or directory`).
    struct Failure: Error {
        var reason: String
    }

    /// The file's text (invalid UTF-8 replaced), at most `limit` bytes.
    static func contents(of path: String, limit: Int = 1 << 20) throws(Failure) -> String {
        String(decoding: try Self.bytes(of: path, limit: limit), as: UTF8.self)
    }

    /// The file's bytes, at most `limit`.
    static func bytes(of path: String, limit: Int = 1 << 20) throws(Failure) -> [UInt8] {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw Failure(reason: Self.errorText(errno)) }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw Failure(reason: Self.errorText(errno))
            }
            if count == 0 { break }
            bytes += chunk[0..<count]
            guard bytes.count <= limit else { throw Failure(reason: "larger than \(limit >> 20) MiB") }
        }
        return bytes
    }

    private static func errorText(_ code: Int32) -> String {
        String(cString: strerror(code)).lowercased()
    }
}
