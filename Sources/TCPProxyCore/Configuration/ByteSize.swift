/// A byte count written the way operators write it: `512`, `64K`, `10M`, `1G` (1024-based).
public struct ByteSize: Hashable, Sendable, CustomStringConvertible {
    /// The number of bytes.
    public var bytes: Int

    /// - Parameter bytes: the number of bytes.
    public init(bytes: Int) {
        self.bytes = bytes
    }

    /// Parses `512`, `64K`, `64k`, `10M`, `1G`; `nil` for anything else, zero, or an overflow.
    public init?(parsing text: String) {
        guard let (value, multiplier) = Self.notation(text), value > 0 else { return nil }
        let (product, overflow) = value.multipliedReportingOverflow(by: multiplier)
        guard !overflow else { return nil }
        self.bytes = product
    }

    /// Whether `text` is a size in the notation that is zero (`0`, `0K`): refused, but not for its notation.
    public static func isZero(_ text: String) -> Bool {
        Self.notation(text)?.value == 0
    }

    /// The number and the multiplier of its suffix, if `text` is digits with at most one K, M or G after them.
    private static func notation(_ text: String) -> (value: Int, multiplier: Int)? {
        var digits = Substring(text)
        var multiplier = 1
        switch text.last {
        case "K", "k": multiplier = 1 << 10
        case "M", "m": multiplier = 1 << 20
        case "G", "g": multiplier = 1 << 30
        default: break
        }
        if multiplier != 1 { digits = digits.dropLast() }
        guard !digits.isEmpty, digits.allSatisfy(\.isASCII), digits.allSatisfy(\.isNumber), let value = Int(digits) else {
            return nil
        }
        return (value, multiplier)
    }

    public var description: String {
        for (suffix, shift) in [("G", 30), ("M", 20), ("K", 10)] where self.bytes % (1 << shift) == 0 {
            return "\(self.bytes >> shift)\(suffix)"
        }
        return "\(self.bytes)"
    }
}
