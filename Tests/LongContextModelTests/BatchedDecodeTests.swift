import AttentionTensor
import Foundation
import LongAttention
@testable import LongContextModel
import XCTest

/// ``CausalLM/step(tokens:caches:threads:)``: several sequences, each at its own position, decoded
/// in one step must give every sequence the bits it gets alone (batch invariance), for exact and
/// fast products, full and sliding layers (past the window), odd widths (the elementwise kernels'
/// scalar tails) and the two real models.
extension GGUFModelTests {
    /// Prefills `prompts` one by one, then decodes `steps` tokens for all of them twice: batched,
    /// and each sequence alone on its own copy of the cache; asserts the logits are the same bits.
    func assertBatchInvariant(_ m: CausalLM, prompts: [[Int32]], steps: Int, _ name: String,
                              file: StaticString = #filePath, line: UInt = #line) throws {
        let V = m.config.vocabSize
        // Two caches per sequence, prefilled alike (no storage shared between the two runs).
        var batched = try prompts.map { try m.makeCache(positions: $0.count + steps, chunk: $0.count) }
        var alone = try prompts.map { try m.makeCache(positions: $0.count + steps, chunk: $0.count) }
        var next = [Int32]()
        for (s, p) in prompts.enumerated() {
            let logits = try m.step(p, cache: &batched[s], threads: nil)
            XCTAssertEqual(try m.step(p, cache: &alone[s], threads: nil).map(\.bitPattern), logits.map(\.bitPattern), name)
            next.append(Int32(logits.indices.max { logits[$0] < logits[$1] }!))
        }
        for step in 0..<steps {
            let together = try m.step(tokens: next, caches: &batched).scalars
            XCTAssertEqual(together.count, prompts.count * V, name, file: file, line: line)
            for s in prompts.indices {
                let single = try m.step([next[s]], cache: &alone[s], threads: nil)
                let row = Array(together[(s * V)..<((s + 1) * V)])
                XCTAssertEqual(row.map(\.bitPattern), single.map(\.bitPattern), "\(name): sequence \(s), step \(step)",
                               file: file, line: line)
                XCTAssertTrue(row.allSatisfy(\.isFinite), name, file: file, line: line)
            }
            // Greedy, with a different token per sequence where the argmaxes coincide.
            next = prompts.indices.map { s in
                let row = together[(s * V)..<((s + 1) * V)]
                return Int32((row.indices.max { row[$0] < row[$1] }! - s * V + s) % V)
            }
        }
        for s in prompts.indices { XCTAssertEqual(batched[s].lengths, alone[s].lengths, name, file: file, line: line) }
    }

    func testBatchedDecodingIsBitwiseTheSequencesAlone() throws {
        let prompts: [[Int32]] = [[3, 1, 4, 1, 5], [9, 2, 6, 5, 3, 5, 8, 9, 7], [2], [0, 12]]
        // Llama, Q8_0, exact and fast.
        let (_, url) = try q8Model()
        let exact = try CausalLM(gguf: url.path)
        try assertBatchInvariant(exact, prompts: prompts, steps: 4, "llama q8_0 exact")
        try assertBatchInvariant(try exact.withMatmul(.fast), prompts: prompts, steps: 4, "llama q8_0 fast")
        // Gemma 3 in float32 with odd widths (D 12, F 7: every kernel's scalar tail) and a window
        // of 3 that every sequence passes: sliding rings, q/k norms, sandwich norms, GeGLU.
        let g = try model(try gemmaConfig())
        let gURL = directory.appendingPathComponent("gemma-f32.gguf")
        try write(g, arch: "gemma3", quantize: false, to: gURL)
        try assertBatchInvariant(try CausalLM(gguf: gURL.path), prompts: prompts, steps: 5, "gemma3 f32 odd widths")
        // The project's own float32 model (dense weights, GEMV per row).
        try assertBatchInvariant(try model(try llamaConfig(D: 12, F: 7, tied: false)), prompts: prompts, steps: 3, "llama f32")
    }

    func testBatchedDecodingRefusesBadBatches() throws {
        let m = try model(try llamaConfig())
        var caches = try (0..<2).map { _ in try m.makeCache(positions: 4, chunk: 1) }
        XCTAssertThrowsError(try m.step(tokens: [1], caches: &caches)) { XCTAssertTrue("\($0)".contains("1 tokens for 2 caches"), "\($0)") }
        var none = [KVCache]()
        XCTAssertThrowsError(try m.step(tokens: [], caches: &none))
        var many = try (0..<17).map { _ in try m.makeCache(positions: 2, chunk: 1) }
        XCTAssertThrowsError(try m.step(tokens: [Int32](repeating: 1, count: 17), caches: &many)) {
            XCTAssertTrue("\($0)".contains("1...16"), "\($0)")
        }
        XCTAssertThrowsError(try m.step(tokens: [1, 99], caches: &caches))   // outside the vocabulary
        var wrong = [try m.makeCache(positions: 4, chunk: 1), try KVCache(layers: 2, batch: 1, kvHeads: 1, capacity: 4, headDimension: 4)]
        XCTAssertThrowsError(try m.step(tokens: [1, 2], caches: &wrong)) { XCTAssertTrue("\($0)".contains("cache 1"), "\($0)") }
        // A full cache fails the call; nothing is half-written into the caches of a refused batch.
        var full = [try m.makeCache(positions: 1, chunk: 1)]
        _ = try m.step(tokens: [1], caches: &full)
        XCTAssertThrowsError(try m.step(tokens: [2], caches: &full))
    }

    /// SmolLM2 and Gemma 3 (data/models): three sequences of different lengths, fast products.
    func testRealModelsBatchedDecodingIsBitwiseTheSequencesAlone() throws {
        var found = false
        for file in ["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"] {
            let path = ReadmePretrainedExampleTests.modelsDirectory + "/" + file
            guard FileManager.default.fileExists(atPath: path) else { continue }
            found = true
            let m = try CausalLM(gguf: path, matmul: .fast)
            try assertBatchInvariant(m, prompts: [[2, 504, 3458], [2, 378], [2]], steps: 2, file)
        }
        if !found { throw XCTSkip("no models in data/models") }
    }
}
