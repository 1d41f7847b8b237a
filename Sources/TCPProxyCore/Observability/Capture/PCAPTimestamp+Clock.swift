#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension PCAPTimestamp {
    /// The wall-clock time now: what tcpdump and Wireshark show as the packet's arrival.
    static func now() -> PCAPTimestamp {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return PCAPTimestamp(
            seconds: UInt32(truncatingIfNeeded: time.tv_sec),
            microseconds: UInt32(truncatingIfNeeded: time.tv_nsec / 1000)
        )
    }
}
