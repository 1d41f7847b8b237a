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
