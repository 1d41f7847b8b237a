import Foundation
import Testing

/// Runs the system's `tcpdump` on a capture file, as a user would.
enum Tcpdump {
    /// What `tcpdump` printed (standard output and standard error) and how it exited.
    struct Result {
        var output: String
        var status: Int32

        /// The output without tcpdump's "reading from file PATH" line: what it says of the packets. (The path is
        /// a random name, which may spell "bad" in hex.)
        var packets: String {
            self.output.split(separator: "\n", omittingEmptySubsequences: false)
                .filter { !$0.hasPrefix("reading from file") }
                .joined(separator: "\n")
        }
    }

    /// Where `tcpdump` is installed, if it is.
    static var executable: String? {
        let directories =
            ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin", "/bin", "/sbin"]
            + (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
        return directories.map { "\($0)/tcpdump" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Reads `path` with `tcpdump -nn -r path` and `arguments`; records a test failure and returns `nil`
    /// when `tcpdump` is not installed, so a missing tool never passes silently.
    static func read(_ path: String, _ arguments: [String]) throws -> Result? {
        guard let executable = self.executable else {
            Issue.record("tcpdump is not installed; the capture file tests need it (apt-get install -y tcpdump)")
            return nil
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = ["-nn", "-r", path] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        // Read to the end before waiting, so a full pipe cannot stall tcpdump.
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Result(output: String(decoding: data, as: UTF8.self), status: process.terminationStatus)
    }
}

/// A fresh path in the temporary directory.
func temporaryCapturePath(_ name: String) -> String {
    FileManager.default.temporaryDirectory
        .appendingPathComponent("tcpproxy-\(name)-\(UUID().uuidString).pcap").path
}

extension String {
    /// How many times `substring` occurs.
    func occurrences(of substring: String) -> Int {
        self.components(separatedBy: substring).count - 1
    }
}
