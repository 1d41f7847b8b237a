/// Process-wide limits the proxy adjusts at start.
public enum ProcessLimits {
    /// Raises the soft open-file limit to the hard one (each bridge needs two descriptors).
    /// - Returns: the limit now in force.
    @discardableResult
    public static func raiseOpenFileLimit() -> UInt64 {
        LinuxSocketOptions.raiseOpenFileLimit()
    }
}
