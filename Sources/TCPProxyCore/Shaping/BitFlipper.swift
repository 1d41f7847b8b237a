import NIOCore

/// `--corrupt PROBABILITY`: flips one random bit in a chunk with the given probability, simulating a
/// faulty link (seed 004's "deliberately flip 1 bit").
struct BitFlipper {
    /// From 0 (never) to 1 (every chunk).
    let probability: Double

    /// Maybe flips one bit of `buffer`'s readable bytes.
    /// - Returns: the index of the byte and the bit flipped, or `nil` when the chunk is left alone.
    @discardableResult
    func maybeFlip<Generator: RandomNumberGenerator>(
        _ buffer: inout ByteBuffer,
        using generator: inout Generator
    ) -> (byte: Int, bit: Int)? {
        guard buffer.readableBytes > 0, self.probability > 0 else { return nil }
        guard self.probability >= 1 || Double.random(in: 0..<1, using: &generator) < self.probability else {
            return nil
        }
        let byte = Int.random(in: 0..<buffer.readableBytes, using: &generator)
        let bit = Int.random(in: 0..<8, using: &generator)
        let index = buffer.readerIndex + byte
        let value = buffer.getInteger(at: index, as: UInt8.self)!
        buffer.setInteger(value ^ UInt8(1 << bit), at: index)
        return (byte, bit)
    }
}
