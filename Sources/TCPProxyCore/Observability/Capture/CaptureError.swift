/// Why `--capture` could not write its file.
public struct CaptureError: Error, Hashable, CustomStringConvertible {
    /// The file that could not be written.
    public var path: String
    /// What went wrong, as one lowercase phrase (`permission denied`).
    public var reason: String

    /// - Parameters:
    ///   - path: The capture file.
    ///   - reason: One lowercase phrase, usually from `strerror`.
    public init(path: String, reason: String) {
        self.path = path
        self.reason = reason
    }

    /// `cannot write capture file /x/y.pcap: permission denied`.
    public var description: String { "cannot write capture file \(self.path): \(self.reason)" }
}
