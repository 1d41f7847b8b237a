import ArgumentParser

/// A number option (seconds, a probability) as the user wrote it.
///
/// Only plain decimal notation counts as a number (`10`, `2.5`, `.5`, `-1`): `Double(_:)` alone would also
/// take `0x10`, `1e3`, `inf` and `nan`. The text is kept so that a message quotes what was given (`'2'`,
/// not `'2.0'`), and text that is no number gets the same message, with the option's range, as a number
/// out of range.
struct DecimalOption: ExpressibleByArgument, ExpressibleByIntegerLiteral, Sendable {
    /// The text as given.
    let text: String
    /// The number, or `nil` when the text is not a plain decimal.
    let number: Double?

    init(argument: String) {
        self.text = argument
        self.number = Self.isPlainDecimal(argument) ? Double(argument) : nil
    }

    init(integerLiteral value: Int) {
        self.init(argument: String(value))
    }

    var defaultValueDescription: String { self.text }

    /// The number, once ``isWithin(_:excludingLowerBound:)`` has accepted it (0 before).
    var value: Double { self.number ?? 0 }

    /// Whether the text is a number within `bounds` (above its lower bound, if `excludingLowerBound`).
    func isWithin(_ bounds: ClosedRange<Double>, excludingLowerBound: Bool = false) -> Bool {
        guard let number, bounds.contains(number) else { return false }
        return !(excludingLowerBound && number == bounds.lowerBound)
    }

    /// An optional sign, then digits with at most one decimal point.
    static func isPlainDecimal(_ text: String) -> Bool {
        let body = text.first == "-" ? text.dropFirst() : Substring(text)
        return body.contains(where: \.isNumber) && body.filter { $0 == "." }.count <= 1
            && body.allSatisfy { $0.isASCII && ($0.isNumber || $0 == ".") }
    }
}
