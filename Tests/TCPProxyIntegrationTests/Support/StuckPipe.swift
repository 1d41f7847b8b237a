import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A named pipe whose reader takes the pcap file header (24 bytes) and then nothing, holding the pipe open:
/// a `--capture` file that stops taking bytes, as a paused `tcpdump -r -` does.
final class StuckPipe: Sendable {
    let path = NSTemporaryDirectory() + "tcpproxy-capture-fifo-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    private let reader = Shared<Int32>(-1)

    init() throws {
        guard mkfifo(self.path, 0o600) == 0 else { throw SocketError.system("mkfifo \(self.path)", errno) }
        let reader = self.reader
        let path = self.path
        // Opening blocks until the proxy opens the other end.
        Thread {
            let fd = open(path, O_RDONLY)
            reader.update { $0 = fd }
            var header = [UInt8](repeating: 0, count: 24)
            _ = read(fd, &header, header.count)
        }.start()
    }

    func remove() {
        if self.reader.value >= 0 { Glibc.close(self.reader.value) }
        try? FileManager.default.removeItem(atPath: self.path)
    }
}
