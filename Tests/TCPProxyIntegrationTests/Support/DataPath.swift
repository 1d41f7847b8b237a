import Foundation
import Testing

/// The data paths a bridge can take; SPEC §2 tests run on each: NIO's channels (`--engine nio`), NIO with
/// the splice engine (`--engine nio --splice always`), and the direct engine copying (`--engine direct
/// --splice never`, with reads and writes batched through io_uring or, `--io-uring off`, one call each)
/// or splicing (`--engine direct --splice always`).
enum DataPath: String, CaseIterable, Sendable, CustomTestStringConvertible {
    /// Bytes pass through NIO's channels.
    case nio
    /// NIO hands the bridge to the splice engine as soon as both sides are connected.
    case splice
    /// The direct engine accepts, connects and copies, the first read and write of every readable event
    /// batched through io_uring (`--io-uring always`: with one connection, polls rarely hold two).
    case direct
    /// The same with one read(2) and one write(2) per call (`--io-uring off`).
    case directSyscalls = "direct-syscalls"
    /// The direct engine splices from the start.
    case directSplice = "direct-splice"

    /// The options that select this path.
    var arguments: [String] {
        switch self {
        case .nio: ["--engine", "nio", "--splice", "never"]
        case .splice: ["--engine", "nio", "--splice", "always"]
        case .direct: ["--engine", "direct", "--splice", "never", "--io-uring", "always"]
        case .directSyscalls: ["--engine", "direct", "--splice", "never", "--io-uring", "off"]
        case .directSplice: ["--engine", "direct", "--splice", "always"]
        }
    }

    var testDescription: String {
        switch self {
        case .nio: "NIO path"
        case .splice: "splice path"
        case .direct: "direct path (io_uring)"
        case .directSyscalls: "direct path (syscalls)"
        case .directSplice: "direct splice path"
        }
    }

    /// The paths of modes the direct engine does not serve (SOCKS): NIO, with and without splicing.
    static var nioPaths: [DataPath] {
        Self.allCases.filter { $0 == .nio || $0 == .splice }
    }

    /// Every path; `TCPPROXY_TEST_PATHS=nio,direct` (any of the raw values) runs the data-path tests on
    /// those only, e.g. to compare a loaded machine's timing failures between paths.
    static var allCases: [DataPath] {
        let every: [DataPath] = [.nio, .splice, .direct, .directSyscalls, .directSplice]
        guard let only = ProcessInfo.processInfo.environment["TCPPROXY_TEST_PATHS"] else { return every }
        let paths = only.split(separator: ",").compactMap { DataPath(rawValue: String($0)) }
        return paths.isEmpty ? every : paths
    }
}

extension ProxyProcess {
    /// Pipe descriptors the process holds (`pipe:[inode]` in /proc/PID/fd): the splice engine uses two
    /// pipes, four descriptors, per spliced bridge.
    func pipeDescriptorCount() -> Int {
        let directory = "/proc/\(self.pid)/fd"
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return -1 }
        return entries.filter { entry in
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "\(directory)/\(entry)"))?.hasPrefix("pipe:")
                == true
        }.count
    }
}
