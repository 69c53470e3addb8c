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
        XCTAssertThrowsError(try m.step(tokens: [1], caches: &caches)) {
            XCTAssertEqual($0 as? ModelError, .invalidOption(name: "caches", value: "2", expected: "1, one per token"))
        }
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
            // Six: the 32-block kernels take the rows in calls of 4 and 2.
            try assertBatchInvariant(m, prompts: [[2, 504, 3458], [2, 378], [2], [2, 99], [2, 7, 7, 7], [2, 1234]], steps: 1, file)
        }
        if !found { throw XCTSkip("no models in data/models") }
    }
}

/// A prompt's prefix taken from a finished sequence's cache (``DecodingSequence``'s `prefix:`, the
/// server's prefix cache) against prefilling it: the same held keys to float rounding, the same
/// greedy tokens; and ``KVCache/copy(from:positions:)``'s limits.
extension GGUFModelTests {
    func testPrefixReuseAgreesWithAFreshPrefill() throws {
        var llama = try llamaConfig(D: 12, F: 7, tied: false)
        llama.vocabSize = ByteTokenizer.vocabSize
        var gemma = try gemmaConfig()
        gemma.vocabSize = ByteTokenizer.vocabSize
        for (name, config) in [("llama", llama), ("gemma, window 3", gemma)] {
            let lm = LanguageModel(model: try model(config), codec: .bytes, chatTemplate: nil, name: name)
            let A = lm.encode("In the beginning God created")
            var first = try DecodingSequence(model: lm, prompt: A, options: GenerationOptions(maxTokens: 6), prefillChunk: 8)
            while !first.isFinished { _ = try first.advance() }
            let held = first.cachedTokens
            XCTAssertEqual(held.count, first.cache.lengths[0], name)
            XCTAssertEqual(Array(held.prefix(A.count)), A, name)
            XCTAssertEqual(Array(held.dropFirst(A.count)), Array(first.tokens.prefix(held.count - A.count)), name)
            let B = held + lm.encode(" the heaven")
            var reused = try DecodingSequence(model: lm, prompt: B, options: GenerationOptions(maxTokens: 5), prefillChunk: 8,
                                              prefix: (first.cache, held.count))
            XCTAssertEqual(reused.prefilled, held.count, name)
            var fresh = try DecodingSequence(model: lm, prompt: B, options: GenerationOptions(maxTokens: 5), prefillChunk: 8)
            while !reused.isFinished { _ = try reused.advance() }
            while !fresh.isFinished { _ = try fresh.advance() }
            XCTAssertEqual(reused.tokens, fresh.tokens, name)
            for layer in 0..<config.layers {
                let a = try reused.cache.keys(layer: layer).contiguous().scalars, b = try fresh.cache.keys(layer: layer).contiguous().scalars
                XCTAssertEqual(a.count, b.count, name)
                // Measured: at most 2.6e-7 of the largest key (float rounding of other chunks); bounded at 1e-5.
                XCTAssertLessThanOrEqual(relativeError(b, a), 1e-5, "\(name), layer \(layer)")
            }
            // A prefix must leave the last prompt token to run, and lie within the source.
            XCTAssertThrowsError(try DecodingSequence(model: lm, prompt: held, options: GenerationOptions(maxTokens: 1),
                                                      prefix: (first.cache, held.count)))
            XCTAssertThrowsError(try DecodingSequence(model: lm, prompt: B + B, options: GenerationOptions(maxTokens: 1),
                                                      prefix: (first.cache, held.count + 1)))
        }
    }

    func testCopyingAPrefixOfACache() throws {
        func filled(_ type: KVCacheType, windows: [Int?], maxAppend: Int, length: Int) throws -> KVCache {
            var c = try KVCache(layers: 2, batch: 1, kvHeads: 2, capacity: 32, headDimension: 32, type: type, windows: windows,
                                maxAppend: maxAppend)
            for p in 0..<length {
                let k = try Tensor.randomUniform([1, 2, 1, 32], seed: UInt64(p), bound: 2)
                try c.append(layer: 0, keys: k, values: k)
                try c.append(layer: 1, keys: k, values: k)
            }
            return c
        }
        for type in [KVCacheType.float32, .bfloat16, .float16, .int8] {
            let source = try filled(type, windows: [nil, nil], maxAppend: 1, length: 12)
            var target = try KVCache(layers: 2, batch: 1, kvHeads: 2, capacity: 32, headDimension: 32, type: type)
            try target.copy(from: source, positions: 7)
            XCTAssertEqual(target.lengths, [7, 7])
            // The stored type's values survive the copy exactly (int8: requantising dequantised blocks).
            let a = try target.keys(layer: 1).contiguous().scalars, b = try source.keys(layer: 1).rows(0..<7).contiguous().scalars
            XCTAssertEqual(a.map(\.bitPattern), b.map(\.bitPattern), "\(type)")
        }
        // A ring of W 3 (maxAppend 1) after 12 positions holds 9...11: a prefix of 10 needs 7...9 (dropped).
        let ring = try filled(.float32, windows: [3, nil], maxAppend: 1, length: 12)
        var target = try KVCache(layers: 2, batch: 1, kvHeads: 2, capacity: 32, headDimension: 32, windows: [3, nil], maxAppend: 4)
        XCTAssertThrowsError(try target.copy(from: ring, positions: 10))
        try target.copy(from: ring, positions: 12)
        XCTAssertEqual(target.lengths, [12, 12])
        XCTAssertThrowsError(try target.copy(from: ring, positions: -1))
    }
}
