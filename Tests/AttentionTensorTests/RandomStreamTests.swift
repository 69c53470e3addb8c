import AttentionTensor
import XCTest

/// The package's one Box–Muller (``SplitMix64/nextNormalPair(scale:)``) gives both
/// ``Tensor/randomNormal(_:seed:std:)`` and ``SplitMix64/nextNormal()``: the same numbers on every
/// machine (values computed independently in float64 with Python's math module, then rounded).
final class RandomStreamTests: XCTestCase {
    func testRandomNormalIsTheBoxMullerPairStream() throws {
        let t = try Tensor.randomNormal([3], seed: 42, std: 0.5)
        XCTAssertEqual(t.scalars, [0.20735988020896912, 0.32634061574935913, -0.44594311714172363])
        var rng = SplitMix64(seed: 42)
        let a = rng.nextNormalPair(scale: 0.5), b = rng.nextNormalPair(scale: 0.5)
        XCTAssertEqual(t.scalars, [Float(a.cosine), Float(a.sine), Float(b.cosine)])
    }

    func testNextNormalIsThePairsCosineBranch() {
        var one = SplitMix64(seed: 7), two = SplitMix64(seed: 7)
        XCTAssertEqual(one.nextNormal(), 1.3649922974572282)
        XCTAssertEqual(two.nextNormalPair().cosine, 1.3649922974572282)
        XCTAssertEqual(one.next(), two.next())   // both took two uniforms
    }
}
