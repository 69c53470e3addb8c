import AttentionTensor
@testable import LongContextModel
import XCTest

/// Sizes that come from a config are multiplied with overflow checks: a config that passes every
/// per-key cap but whose parameters take more than 2^63 bytes is a thrown error, not a trap.
final class CheckedSizeTests: XCTestCase {
    /// A Llama whose count fits an `Int` (about 2^61 floats) but whose byte count does not: 256
    /// layers of q_proj and o_proj of 4096 heads × head_dim 2^20 by hidden 2^20.
    func testHugeLlamaThrowsInsteadOfTrapping() throws {
        let json = #"{"model_type": "llama", "vocab_size": 256, "hidden_size": 1048576, "intermediate_size": 16,"#
            + #" "num_hidden_layers": 256, "num_attention_heads": 4096, "num_key_value_heads": 1, "head_dim": 1048576}"#
        XCTAssertThrowsError(try CausalLM(config: ModelConfig(jsonData: Data(json.utf8)), seed: 0)) { error in
            guard case ModelError.tooLarge(let s, nil, Int.max) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(s.contains("parameter bytes") && s.contains("hidden_size 1048576"), s)
        }
    }

    /// A Mixtral of the same kind (8 experts), through the Swift initialiser.
    func testHugeMixtralThrowsInsteadOfTrapping() throws {
        XCTAssertThrowsError(try CausalLM(
            config: ModelConfig(architecture: .mixtral, vocabSize: 256, hiddenSize: 1 << 20, intermediateSize: 16,
                                layers: 256, heads: 4096, kvHeads: 1, headDim: 1 << 20, experts: 8, expertsPerToken: 2),
            seed: 0)) { error in
            guard case ModelError.tooLarge(let s, nil, Int.max) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(s.contains("8 experts"), s)
        }
        // Experts alone: 1024 layers × 1024 experts × 3 · 2^40 floats (no layout is built to find out).
        XCTAssertThrowsError(try ModelConfig(architecture: .mixtral, vocabSize: 256, hiddenSize: 1 << 20,
                                             intermediateSize: 1 << 20, layers: 1024, heads: 1, kvHeads: 1,
                                             experts: 1024, expertsPerToken: 2)) { error in
            guard case ModelError.tooLarge(let s, nil, Int.max) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(s.contains("1024 experts of intermediate_size 1048576"), s)
        }
    }

    /// ParameterSet itself: four tensors of 2^59 floats are 2^61 floats, 2^63 bytes.
    func testParameterSetByteCountIsChecked() {
        let layout = (0..<4).map { (name: "t\($0)", shape: [1 << 30, 1 << 29]) }
        XCTAssertThrowsError(try ParameterSet(layout: layout)) { error in
            XCTAssertEqual(error as? ModelError, .tooLarge(quantity: "the bytes of \(1 << 61) parameters", value: nil, limit: Int.max))
        }
    }

    /// The arithmetic count agrees with the layout for every family's pieces.
    func testParameterBytesMatchTheLayout() throws {
        var configs = [
            try ModelConfig(vocabSize: 40, hiddenSize: 16, intermediateSize: 24, layers: 2, heads: 4, kvHeads: 2),
            try ModelConfig(architecture: .mixtral, vocabSize: 40, hiddenSize: 16, intermediateSize: 24, layers: 2, heads: 4,
                            kvHeads: 1, tieWordEmbeddings: true, experts: 3, expertsPerToken: 2, expertSizes: [8, 16, 24],
                            attention: [.exact, .infini(segment: 8, update: .delta)]),
        ]
        var gemma = try ModelConfig(vocabSize: 40, hiddenSize: 16, intermediateSize: 24, layers: 2, heads: 4, kvHeads: 2)
        (gemma.qkvBias, gemma.queryKeyNorm, gemma.sandwichNorms) = (true, true, true)
        configs.append(gemma)
        for c in configs {
            let floats = CausalLM.layout(c).reduce(0) { $0 + $1.shape.reduce(1, *) }
            XCTAssertEqual(try c.parameterBytes(), 4 * floats, "\(c.architecture)")
        }
    }
}
