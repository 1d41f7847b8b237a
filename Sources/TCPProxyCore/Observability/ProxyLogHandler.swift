import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The log line formats of `--log-format`.
public enum LogFormat: String, Sendable, CaseIterable {
    /// `2026-11-21T23:59:00.123Z info bridge closed bridge.id=7 close.reason=completed …`
    case text
    /// `{"time":"…","level":"info","message":"bridge closed","bridge.id":7,…}`
    case json
}

/// A swift-log handler that writes one event per line to standard error, as text or JSON, through
/// ``LogOutput`` (a thread of its own: a reader that stops reading never stops the proxy).
public struct ProxyLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    private let format: LogFormat
    private let label: String

    /// - Parameters:
    ///   - label: the logger's label (not printed; every line comes from tcpproxy).
    ///   - format: text or JSON.
    ///   - level: the lowest level written.
    public init(label: String, format: LogFormat, level: Logger.Level) {
        self.label = label
        self.format = format
        self.logLevel = level
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = self.metadata
        if let extra = event.metadata {
            merged.merge(extra, uniquingKeysWith: { _, new in new })
        }
        let line = ProxyLogHandler.formatLine(
            format: self.format,
            time: ProxyLogHandler.timestamp(),
            level: event.level,
            message: "\(event.message)",
            metadata: merged
        )
        LogOutput.standardError.append(line, format: self.format)
    }

    /// One log line, newline included. Metadata keys are sorted so lines are stable.
    static func formatLine(
        format: LogFormat,
        time: String,
        level: Logger.Level,
        message: String,
        metadata: Logger.Metadata
    ) -> String {
        let keys = metadata.keys.sorted()
        switch format {
        case .text:
            var line = "\(time) \(level) \(message)"
            for key in keys {
                line += " \(key)=\(textValue(metadata[key]!))"
            }
            return line + "\n"
        case .json:
            var line = "{\"time\":\(jsonString(time)),\"level\":\(jsonString(level.rawValue)),"
            line += "\"message\":\(jsonString(message))"
            for key in keys {
                line += ",\(jsonString(key)):\(jsonValue(metadata[key]!))"
            }
            return line + "}\n"
        }
    }

    /// A metadata value for a JSON line: a number for one logged as a number (`.stringConvertible` of an
    /// integer or a finite floating-point value: counts, ids, durations), so `jq` can sum and compare them;
    /// a string for everything else.
    static func jsonValue(_ value: Logger.MetadataValue) -> String {
        if case .stringConvertible(let convertible) = value {
            switch convertible {
            case let number as any BinaryInteger: return "\(number)"
            case let number as Double where number.isFinite: return "\(number)"
            default: break
            }
        }
        return jsonString("\(value)")
    }

    /// A metadata value for a text line: quoted when it has spaces or quotes, so lines stay parseable.
    static func textValue(_ value: Logger.MetadataValue) -> String {
        let text = "\(value)"
        if text.isEmpty || text.contains(where: { $0 == " " || $0 == "\"" || $0 == "=" || $0.isNewline }) {
            return jsonString(text)
        }
        return text
    }

    /// `text` as a JSON string literal.
    static func jsonString(_ text: String) -> String {
        var result = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                result += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result + "\""
    }

    /// UTC time with milliseconds, ISO 8601.
    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        let millis = Int32(now.tv_nsec / 1_000_000)
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(millis, 3))Z"
    }
}
