import Foundation

/// ALiBi (Press et al. 2022): a per-head linear penalty on distance, `-slope_h · |i + M - N - j|`,
/// added to the scores on the fly (never an N×M tensor).
public struct ALiBi: Sendable, Equatable {
    /// One slope per query head.
    public let slopes: [Float]

    /// The paper's slopes for `heads` heads: `2^(-8h/H)` for h = 1…H when H is a power of two;
    /// otherwise those of the nearest lower power of two `n`, then every other slope of `2n`.
    public init(heads: Int) {
        func powerOfTwoSlopes(_ n: Int) -> [Double] {
            let start = Foundation.pow(2.0, -8.0 / Double(n))
            return (1...n).map { Foundation.pow(start, Double($0)) }
        }
        guard heads > 0 else { slopes = []; return }
        let n = 1 << (Int.bitWidth - 1 - heads.leadingZeroBitCount)
        var s = powerOfTwoSlopes(n)
        if n < heads { s += Array(stride(from: 0, to: 2 * n, by: 2).map { powerOfTwoSlopes(2 * n)[$0] }.prefix(heads - n)) }
        slopes = s.map { Float($0) }
    }

    /// Explicit slopes.
    public init(slopes: [Float]) { self.slopes = slopes }
}
