import AttentionTensor
import MixtureOfExperts
import XCTest

/// Expert weights given as raw pointers (``MoEWeights``) are checked for NaN and infinity by
/// `checkFinite`, which names the tensor and the row-major index.
final class ExpertWeightScanTests: XCTestCase {
    func testCheckFiniteNamesTheFirstNonFiniteExpertWeight() throws {
        let layer = try MixtureOfExperts.random(hidden: 6, expertSizes: [3, 5, 4], seed: 2)
        let config = try layer.config(topK: 2, renormalize: true)
        XCTAssertNoThrow(try layer.withWeights { try $0.checkFinite(config) })
        for (name, index, value) in [("experts.1.w3.weight", 29, Float.nan), ("experts.2.w2.weight", 0, .infinity),
                                     ("experts.0.w1.weight", 17, -.infinity), ("gate.weight", 11, .nan)] {
            var bad = layer
            let entry = try XCTUnwrap(bad.layout.entries(prefix: "").first { $0.name == name })
            bad.updateParameters { $0[entry.offset + index] = value }
            XCTAssertThrowsError(try bad.withWeights { try $0.checkFinite(config, prefix: "model.layers.3.block_sparse_moe.") }) {
                XCTAssertEqual($0 as? MoEError, .nonFinite(name: "model.layers.3.block_sparse_moe." + name, index: index))
            }
        }
        try layer.withWeights { w in
            var short = w
            short.w2.removeLast()
            XCTAssertThrowsError(try short.checkFinite(config)) { XCTAssertEqual($0 as? MoEError, .expertCountMismatch(expected: 3, got: 2)) }
        }
    }
}
