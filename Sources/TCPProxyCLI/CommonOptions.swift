import ArgumentParser
import Logging
import NIOCore
import TCPProxyCore

/// The options every mode takes (SPEC §1, "Options (every mode)").
struct CommonOptions: ParsableArguments {
    /// The high-water marks `--high-water-mark` may set.
    static let highWaterMarkRange = "use 512 to 1G, e.g. 64K or 10M"

    @Option(parsing: .unconditional, help: "Event-loop threads (default: the number of CPU cores).")
    var threads: Int?

    @Option(parsing: .unconditional, help: "Most concurrent clients; one above the limit is accepted and closed at once.")
    var maxConnections: Int?

    @Option(
        parsing: .unconditional,
        help: "Most bytes buffered per direction of a bridge before reading pauses (512 to 1G, e.g. 64K, 10M).",
        transform: { try CommonOptions.size($0, option: "--high-water-mark", expecting: CommonOptions.highWaterMarkRange) }
    )
    var highWaterMark: ByteSize = ByteSize(bytes: 64 * 1024)

    @Option(parsing: .unconditional, help: "Seconds a direction may hold data and deliver none before the bridge is aborted; 0 disables.")
    var stallTimeout: DecimalOption = 10

    @Option(parsing: .unconditional, help: "Seconds without traffic either way before a bridge is closed; 0 (default) disables.")
    var idleTimeout: DecimalOption = 0

    @Option(parsing: .unconditional, help: "Seconds to wait for the server connection.")
    var connectTimeout: DecimalOption = 10

    @Option(parsing: .unconditional, help: "On SIGINT/SIGTERM, seconds open bridges may go on before they are closed.")
    var drainTimeout: DecimalOption = 10

    @Option(
        help: "Accept clients only from this network (repeatable), e.g. 10.0.0.0/8 or ::1.",
        transform: { text in
            do { return try CIDR(parsing: text) } catch { throw ValidationError("\(error)") }
        }
    )
    var allow: [CIDR] = []

    @Option(
        help: ArgumentHelp("Lowest level logged: trace, debug, info, notice, warning, error, critical.", valueName: "level"),
        transform: { text in
            guard let level = Logger.Level(rawValue: text) else {
                throw ValidationError("use trace, debug, info, notice, warning, error or critical")
            }
            return level
        }
    )
    var logLevel: Logger.Level = .info

    @Option(help: "Log line format: text or json.")
    var logFormat: LogFormat = .text

    @Option(help: "Send a PROXY protocol header (v1 or v2) to each server first.")
    var proxyProtocol: ProxyProtocolVersion?

    @Flag(help: "Require a PROXY protocol header (v1 or v2) from each client and use its addresses.")
    var acceptProxyProtocol = false

    @Option(
        help: "With --accept-proxy-protocol: only these peers may connect and send headers (repeatable CIDR).",
        transform: { text in
            do { return try CIDR(parsing: text) } catch { throw ValidationError("\(error)") }
        }
    )
    var trustedProxy: [CIDR] = []

    @Option(
        help: ArgumentHelp(
            "Advanced: move bridge bytes with splice(2) inside the kernel: auto (bulk transfers), always, never.",
            valueName: "auto|always|never"
        )
    )
    var splice: SpliceMode = .auto

    @Option(
        help: ArgumentHelp(
            "Advanced: what serves the bridges: auto (the direct engine where the listener allows, else NIO), direct, nio.",
            valueName: "auto|direct|nio"
        )
    )
    var engine: EngineMode = .auto

    @Option(
        name: .customLong("io-uring"),
        help: ArgumentHelp(
            "Advanced: on the direct engine, batch reads and writes through io_uring: auto (where the kernel allows), always (a lone socket too), off.",
            valueName: "auto|always|off"
        )
    )
    var ioUring: IOUringMode = .auto

    @OptionGroup(title: "Shaping, visibility and faults")
    var observability: ObservabilityOptions

    /// `--engine direct` given to a mode the direct engine does not serve (SOCKS, mux, demux): a usage error of
    /// that mode's command (so that its usage is printed, not the root command's).
    func refuseDirectEngine() throws {
        if self.engine == .direct {
            throw ValidationError("--engine direct cannot serve this listener: only forward and transparent mode run on the direct engine")
        }
    }

    func validate() throws {
        if let threads, threads < 1 || threads > 1024 {
            throw ValidationError("invalid value '\(threads)' for --threads (use a number from 1 to 1024)")
        }
        // The direct engine reads into a buffer of this size per thread, and a bridge holds up to it per direction.
        if !(512...(1 << 30)).contains(self.highWaterMark.bytes) {
            throw ValidationError("invalid size '\(self.highWaterMark)' for --high-water-mark (\(Self.highWaterMarkRange))")
        }
        if let maxConnections, maxConnections < 1 {
            throw ValidationError("invalid value '\(maxConnections)' for --max-connections (use 1 or more)")
        }
        // 0 turns the stall, idle and drain timeouts off (or closes at once); a connect needs some time.
        let timeouts = [
            ("--stall-timeout", self.stallTimeout, false), ("--idle-timeout", self.idleTimeout, false),
            ("--connect-timeout", self.connectTimeout, true), ("--drain-timeout", self.drainTimeout, false),
        ]
        for (name, value, positive) in timeouts
        where !value.isWithin(0...(86_400 * 365), excludingLowerBound: positive) {
            let range = positive ? "more than 0" : "0"
            throw ValidationError("invalid value '\(value.text)' for \(name) (use seconds from \(range) up to 31536000, one year)")
        }
        if !self.trustedProxy.isEmpty && !self.acceptProxyProtocol {
            throw ValidationError("--trusted-proxy only makes sense with --accept-proxy-protocol")
        }
    }

    /// The bridge limits these options describe.
    var bridgeConfiguration: BridgeConfiguration {
        var configuration = BridgeConfiguration()
        configuration.highWaterMark = self.highWaterMark.bytes
        configuration.stallTimeout = CommonOptions.timeAmount(self.stallTimeout.value)
        configuration.idleTimeout = CommonOptions.timeAmount(self.idleTimeout.value)
        configuration.connectTimeout = CommonOptions.timeAmount(self.connectTimeout.value) ?? .seconds(10)
        configuration.drainTimeout = .nanoseconds(Int64(self.drainTimeout.value * 1e9))
        self.observability.apply(to: &configuration)
        configuration.sendProxyHeader = self.proxyProtocol
        configuration.splice = self.splice
        configuration.engine = self.engine
        configuration.ioUring = self.ioUring
        return configuration
    }

    var admissionPolicy: AdmissionPolicy {
        AdmissionPolicy(allow: self.allow, maxConnections: self.maxConnections, trustedProxies: self.trustedProxy)
    }

    /// Seconds as a `TimeAmount`; 0 means off (`nil`).
    static func timeAmount(_ seconds: Double) -> TimeAmount? {
        seconds > 0 ? .nanoseconds(Int64(seconds * 1e9)) : nil
    }

    /// - Parameter expecting: what to use instead, when `text` is not a size.
    static func size(_ text: String, option: String, expecting: String = "use 512, 64K, 10M or 1G") throws -> ByteSize {
        guard let size = ByteSize(parsing: text) else {
            // A zero is a size, just not one that can work: say so rather than show the notation.
            let zero = ByteSize.isZero(text) ? "must be more than 0; " : ""
            throw ValidationError("invalid size '\(text)' for \(option) (\(zero)\(expecting))")
        }
        return size
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
extension BalanceAlgorithm: ExpressibleByArgument {}
extension ProxyProtocolVersion: ExpressibleByArgument {}
extension IOUringMode: ExpressibleByArgument {}
extension LogFormat: ExpressibleByArgument {}
extension SpliceMode: ExpressibleByArgument {}
extension EngineMode: ExpressibleByArgument {}
