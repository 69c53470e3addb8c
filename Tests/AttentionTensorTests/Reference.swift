import AttentionTensor
import XCTest

/// Float64 reference helpers shared by the tests.
enum Ref {
    /// Max |a - b| over max(1, max |b|): the relative error measure the tests use.
    static func relError(_ got: [Float], _ expected: [Double]) -> Double {
        precondition(got.count == expected.count)
        var err = 0.0, scale = 1.0
        for (g, e) in zip(got, expected) {
            err = max(err, abs(Double(g) - e))
            scale = max(scale, abs(e))
        }
        return err / scale
    }

    static func random(_ n: Int, seed: UInt64) -> [Float] {
        var rng = SplitMix64(seed: seed)
        return (0..<n).map { _ in Float(rng.nextUnitOpen() * 2 - 1) }
    }
}
