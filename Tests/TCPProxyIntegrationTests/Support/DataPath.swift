import Foundation
import Testing

/// The two data paths a bridge can take; SPEC §2 tests run on both (`--splice never` and `--splice always`).
enum DataPath: String, CaseIterable, Sendable, CustomTestStringConvertible {
    /// Bytes pass through NIO's channels.
    case nio
    /// The bridge is handed to the splice engine as soon as both sides are connected.
    case splice

    /// The `--splice` option that selects this path.
    var arguments: [String] {
        ["--splice", self == .nio ? "never" : "always"]
    }

    var testDescription: String { self == .nio ? "NIO path" : "splice path" }

    /// Both paths; `TCPPROXY_TEST_PATHS=nio` (or `splice`) runs the data-path tests on one only, e.g. to
    /// compare a loaded machine's timing failures with the suite as it was before the splice path.
    static var allCases: [DataPath] {
        guard let only = ProcessInfo.processInfo.environment["TCPPROXY_TEST_PATHS"] else { return [.nio, .splice] }
        let paths = only.split(separator: ",").compactMap { DataPath(rawValue: String($0)) }
        return paths.isEmpty ? [.nio, .splice] : paths
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
