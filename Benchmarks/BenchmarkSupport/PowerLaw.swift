import Foundation

/// A least-squares fit of `y = c · x^k` in log–log space: how a cost scales with length.
public struct PowerLaw: Sendable, Equatable {
    /// The exponent `k` (1 = linear, 2 = quadratic).
    public let exponent: Double
    /// The coefficient `c`.
    public let coefficient: Double
    /// Coefficient of determination of the log–log fit (1 = a straight line).
    public let r2: Double

    /// Fits points with positive coordinates; nil with fewer than two distinct x.
    public static func fit(x: [Double], y: [Double]) -> PowerLaw? {
        let pts = zip(x, y).filter { $0.0 > 0 && $0.1 > 0 && $0.0.isFinite && $0.1.isFinite }
        guard pts.count >= 2, Set(pts.map(\.0)).count >= 2 else { return nil }
        let lx = pts.map { Foundation.log($0.0) }, ly = pts.map { Foundation.log($0.1) }
        let n = Double(pts.count)
        let mx = lx.reduce(0, +) / n, my = ly.reduce(0, +) / n
        var sxy = 0.0, sxx = 0.0, syy = 0.0
        for (a, b) in zip(lx, ly) {
            sxy += (a - mx) * (b - my)
            sxx += (a - mx) * (a - mx)
            syy += (b - my) * (b - my)
        }
        let k = sxy / sxx
        let r2 = syy == 0 ? 1 : (sxy * sxy) / (sxx * syy)
        return PowerLaw(exponent: k, coefficient: Foundation.exp(my - k * mx), r2: r2)
    }

    public func callAsFunction(_ x: Double) -> Double { coefficient * Foundation.pow(x, exponent) }
}
