import AttentionTensor
import Foundation
import LongAttention
@testable import LongContextModel
import XCTest

/// An attached LoRA adapter (``AttachedLoRA``, unmerged: what `attn-server --adapter` serves) keeps
/// the batched decoding step batch-invariant: each sequence's logits are the bits it gets alone.
/// The adapters here have a random B (as `attn lm lora-init --random-b`): with PEFT's B = 0 the
/// adapter adds nothing and no test of it could fail.
extension GGUFModelTests {
    static let allModules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

    /// An adapter for `m` on every projection with B drawn uniformly from ±`bound`.
    func randomAdapter(_ m: CausalLM, rank: Int, seed: UInt64, bound: Double = 0.1) throws -> LoRAAdapter {
        let a = try LoRAAdapter(model: m, rank: rank, alpha: Double(2 * rank), targetModules: Self.allModules, seed: seed)
        var rng = SplitMix64(seed: seed &+ 1)
        for e in a.parameters.entries where e.name.hasSuffix("lora_B.weight") {
            for i in 0..<e.count { a.parameters.scalars[e.offset + i] = Float((2 * rng.nextUnitOpen() - 1) * bound) }
        }
        return a
    }

    /// The adapter's product alone, at SmolLM2's shapes (in 576, out 1536 and 576, r 8 and 16):
    /// every row of a call of 2...16 rows is the bits of that row in a call of its own.
    func testAdapterProductIsBatchInvariantPerRow() throws {
        let c = try ModelConfig(architecture: .llama, vocabSize: 32, hiddenSize: 576, intermediateSize: 1536, layers: 1, heads: 9,
                                kvHeads: 3, headDim: 64, rmsNormEps: 1e-5, positions: .rope(theta: 10000, scaling: .none),
                                tieWordEmbeddings: true, maxPositionEmbeddings: 64)
        let m = try CausalLM(config: c, seed: 5)
        var rows = [Int: Int]()   // rows of a call -> rows that differed from alone
        for rank in [8, 16] {
            let lora = try AttachedLoRA(adapter: try randomAdapter(m, rank: rank, seed: UInt64(rank)))
            for (weight, k, n) in [("model.layers.0.mlp.up_proj.weight", 576, 1536), ("model.layers.0.mlp.down_proj.weight", 1536, 576),
                                   ("model.layers.0.self_attn.q_proj.weight", 576, 576)] {
                let x = try Tensor.randomUniform([16, k], seed: UInt64(k + rank), bound: 1).scalars
                let base = try Tensor.randomUniform([16, n], seed: UInt64(n), bound: 1).scalars
                var alone = base
                for r in 0..<16 {
                    x.withUnsafeBufferPointer { xp in
                        alone.withUnsafeMutableBufferPointer { lora.addProduct(weight, xp.baseAddress! + r * k, $0.baseAddress! + r * n, rows: 1, in: k, out: n) }
                    }
                }
                XCTAssertNotEqual(alone, base, "the adapter must change the outputs")
                for count in [2, 3, 4, 8, 16] {
                    var together = base
                    x.withUnsafeBufferPointer { xp in
                        together.withUnsafeMutableBufferPointer { lora.addProduct(weight, xp.baseAddress!, $0.baseAddress!, rows: count, in: k, out: n) }
                    }
                    var differing = 0
                    for r in 0..<count where together[(r * n)..<((r + 1) * n)].map(\.bitPattern) != alone[(r * n)..<((r + 1) * n)].map(\.bitPattern) {
                        differing += 1
                    }
                    rows[count, default: 0] += differing
                    XCTAssertEqual(differing, 0, "\(weight), r \(rank): \(differing) of \(count) rows differ from the row alone")
                }
            }
        }
        print("adapter product rows differing from alone, by rows per call: \(rows.sorted { $0.key < $1.key })")
    }

    /// The batched step of a Q8_0 model with an adapter on every projection (exact and fast
    /// products), and of SmolLM2 (data/models, fast, six sequences): bitwise each sequence alone.
    /// With the adapter's product as two sgemm calls over all rows (before), SmolLM2's and Gemma 3's
    /// rows all differed from alone at the first step (OpenBLAS 0.3, 2026-12-06); the tiny model's did not.
    func testBatchedDecodingWithAnAttachedAdapterIsBitwiseTheSequencesAlone() throws {
        let prompts: [[Int32]] = [[3, 1, 4, 1, 5], [9, 2, 6, 5, 3, 5, 8, 9, 7], [2], [0, 12]]
        let (_, url) = try q8Model()
        let exact = try CausalLM(gguf: url.path)
        let adapted = try exact.attaching(try randomAdapter(exact, rank: 4, seed: 11, bound: 0.5))
        // The adapter changes the model.
        var a = try adapted.makeCache(positions: 8, chunk: 5), b = try exact.makeCache(positions: 8, chunk: 5)
        XCTAssertNotEqual(try adapted.step(prompts[0], cache: &a, threads: nil), try exact.step(prompts[0], cache: &b, threads: nil))
        try assertBatchInvariant(adapted, prompts: prompts, steps: 4, "llama q8_0 exact + LoRA")
        try assertBatchInvariant(try adapted.withMatmul(.fast), prompts: prompts, steps: 4, "llama q8_0 fast + LoRA")
        let path = ReadmePretrainedExampleTests.modelsDirectory + "/SmolLM2-135M-Instruct.Q4_1.gguf"
        guard FileManager.default.fileExists(atPath: path) else { throw XCTSkip("\(path) is absent") }
        let m = try CausalLM(gguf: path, matmul: .fast)
        let am = try m.attaching(try randomAdapter(m, rank: 8, seed: 3))
        try assertBatchInvariant(am, prompts: [[2, 504, 3458], [2, 378], [2], [2, 99], [2, 7, 7, 7], [2, 1234]], steps: 1, "SmolLM2 + LoRA")
    }
}
