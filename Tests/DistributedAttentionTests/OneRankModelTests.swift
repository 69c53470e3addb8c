import AttentionTensor
import DistributedModel
import LongContextModel
import SwiftMPI
import XCTest

/// A tiny random model across a one-rank world: the distributed prefill (the ring over the zigzag
/// chunks, and the sliding layers' halo) and decoding (tensor-parallel products gathered from one
/// rank) give the single-process logits, and what the distributed run does not compute is refused
/// with a typed error.
final class OneRankModelTests: XCTestCase {
    func tiny(window: Int? = nil, positions: ModelConfig.PositionEncoding = .rope(theta: 10000, scaling: .none)) throws -> CausalLM {
        var c = try ModelConfig(vocabSize: 17, hiddenSize: 16, intermediateSize: 24, layers: 2, heads: 4, kvHeads: 2, headDim: 4,
                                rmsNormEps: 1e-5, positions: positions, maxPositionEmbeddings: 64)
        if let window { c.slidingWindow = window; c.layerKinds = [.sliding, .full] }
        try c.validate()
        return try CausalLM(config: c, seed: 7)
    }

    func maxDifference(_ a: [Float], _ b: [Float]) -> Float {
        guard a.count == b.count else { return .infinity }
        return zip(a, b).map { abs($0 - $1) }.max() ?? 0
    }

    func testPrefillAndDecodingGiveTheSingleProcessLogits() throws {
        let comm = try OneRankWorld.communicator()
        for window in [nil, 3] as [Int?] {
            let model = try tiny(window: window)
            let prompt: [Int32] = [1, 5, 12, 0, 7, 7, 3, 2, 9]
            let single = CachedDecoding(model: model, threads: 1)
            let dist = DistributedDecoding(lm: try DistributedCausalLM(model: model, comm: comm, threads: 1))
            XCTAssertLessThan(maxDifference(try dist.prefill(prompt, maxTokens: 3), try single.prefill(prompt, maxTokens: 3)), 1e-4,
                              "prefill, window \(window.map(String.init) ?? "none")")
            for token: Int32 in [4, 16, 0] {
                XCTAssertLessThan(maxDifference(try dist.next(token), try single.next(token)), 1e-4, "token \(token)")
            }
            XCTAssertEqual(dist.length, prompt.count + 3)
        }
    }

    func testDistributedModelRefusesWhatItDoesNotCompute() throws {
        let comm = try OneRankWorld.communicator()
        XCTAssertThrowsError(try DistributedCausalLM(model: try tiny(positions: .alibi), comm: comm)) {
            guard case .unsupportedModel("a distributed run", _)? = $0 as? ModelError else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try DistributedCausalLM(model: try tiny(), comm: comm, threads: 0)) {
            XCTAssertEqual($0 as? ModelError, .invalidOption(name: "threads", value: "0", expected: "at least 1"))
        }
        let lm = try DistributedCausalLM(model: try tiny(), comm: comm)
        XCTAssertEqual(lm.minimumTokens, 2)
        XCTAssertThrowsError(try lm.forward([3])) {
            guard case .tooFewTokens(_, 1, 2)? = $0 as? ModelError else { return XCTFail("\($0)") }
        }
    }
}
