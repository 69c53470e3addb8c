import AttentionTensor
import Foundation
import LongAttention
@testable import LongContextModel
import XCTest

/// The decoder against a float64 reference (logits, loss) and its gradients against float64
/// central finite differences of that reference, for RoPE (plain, linear, NTK) and ALiBi, GQA and
/// MHA, tied and separate heads, odd sizes.
final class CausalLMTests: XCTestCase {
    func tinyConfig(positions: ModelConfig.PositionEncoding = .rope(theta: 10000, scaling: .none), tied: Bool = false,
                    heads: Int = 4, kvHeads: Int = 2, attention: LayerAttention = .exact) throws -> ModelConfig {
        try ModelConfig(vocabSize: 13, hiddenSize: 12, intermediateSize: 7, layers: 2, heads: heads, kvHeads: kvHeads, headDim: 4,
                        rmsNormEps: 1e-5, positions: positions, tieWordEmbeddings: tied, attention: Array(repeating: attention, count: 2))
    }

    /// A model with weights large enough that every path matters (std 0.3; norms around 1).
    func model(_ c: ModelConfig, seed: UInt64 = 3) throws -> CausalLM {
        let m = try CausalLM(config: c, seed: seed)
        var rng = SplitMix64(seed: seed &+ 100)
        for e in m.parameters.entries {
            let p = m.parameters.scalars + e.offset
            let norm = e.name.hasSuffix("norm.weight")
            let centre = norm ? Double(1 - c.normWeightOffset) : 0
            for i in 0..<e.count { p[i] = Float(centre + 0.3 * rng.nextNormal()) }
        }
        return m
    }

    let tokens: [Int32] = [1, 5, 12, 0, 7, 7, 3, 2, 9, 11, 4, 6, 8, 10]   // B = 2, T = 7

    func configs() throws -> [(String, ModelConfig)] {
        [("rope gqa", try tinyConfig()),
         ("rope linear ×4, tied, mha", try tinyConfig(positions: .rope(theta: 10000, scaling: .linear(factor: 4)), tied: true, kvHeads: 4)),
         ("rope ntk ×4, mqa", try tinyConfig(positions: .rope(theta: 500, scaling: .ntk(factor: 4)), kvHeads: 1)),
         ("alibi", try tinyConfig(positions: .alibi)),
         ("mixtral top-2 of 3, experts of 5, 7 and 9", try ModelConfig(architecture: .mixtral, vocabSize: 13, hiddenSize: 12,
                                                                        intermediateSize: 7, layers: 2, heads: 4, kvHeads: 2, headDim: 4,
                                                                        experts: 3, expertsPerToken: 2, expertSizes: [5, 7, 9]))]
            + (try familyConfigs())
    }

    /// The families' pieces, each on the tiny model, at odd sizes (3 layers, windows 1 and 3 over T = 7).
    func familyConfigs() throws -> [(String, ModelConfig)] {
        func tiny(_ arch: ModelConfig.Architecture = .llama, layers: Int = 3, kvHeads: Int = 2,
                  positions: ModelConfig.PositionEncoding = .rope(theta: 10000, scaling: .none), maxPositions: Int = 64,
                  tied: Bool = false, _ edit: (inout ModelConfig) -> Void = { _ in }) throws -> ModelConfig {
            var c = try ModelConfig(architecture: arch, vocabSize: 13, hiddenSize: 12, intermediateSize: 7, layers: layers, heads: 4,
                                    kvHeads: kvHeads, headDim: 4, rmsNormEps: 1e-5, positions: positions, tieWordEmbeddings: tied,
                                    maxPositionEmbeddings: maxPositions)
            edit(&c)
            try c.validate()
            return c
        }
        return [
            ("llama3 rope ×8 from 4", try tiny(positions: .rope(theta: 500, scaling: .llama3(factor: 8, lowFrequencyFactor: 1,
                                                                                             highFrequencyFactor: 4, originalContext: 4)))),
            ("yarn ×4 from 3 (attention factor 1.3)",
             try tiny(positions: .rope(theta: 500, scaling: .yarn(factor: 4, originalContext: 3, betaFast: 32, betaSlow: 1,
                                                                  attentionFactor: 1.3, truncate: true)))),
            ("yarn untruncated", try tiny(positions: .rope(theta: 300, scaling: .yarn(factor: 2, originalContext: 5, betaFast: 8,
                                                                                      betaSlow: 2, attentionFactor: 1.07, truncate: false)))),
            ("dynamic ntk ×2 past 5 positions", try tiny(positions: .rope(theta: 500, scaling: .dynamic(factor: 2)), maxPositions: 5)),
            ("qwen2 biases, tied", try tiny(.qwen2, tied: true) { $0.qkvBias = true }),
            ("qwen3 q/k norms, mqa", try tiny(.qwen3, kvHeads: 1) { $0.queryKeyNorm = true }),
            ("mistral window 3", try tiny(.mistral) { $0.slidingWindow = 3; $0.layerKinds = [.sliding, .sliding, .sliding] }),
            ("window 1 then full", try tiny(.mistral, layers: 2) { $0.slidingWindow = 1; $0.layerKinds = [.sliding, .full] }),
            ("gemma3: sandwich, (1 + w), GeGLU, scales, local rope, window 3", try tiny(.gemma3, kvHeads: 1, tied: true) {
                $0.queryKeyNorm = true; $0.sandwichNorms = true; $0.normWeightOffset = 1; $0.activation = .geluTanh
                $0.embeddingScale = Float(12.0.squareRoot()); $0.attentionScale = 1 / 6.0.squareRoot()
                $0.slidingWindow = 3; $0.layerKinds = [.sliding, .sliding, .full]
                $0.slidingPositions = .rope(theta: 100, scaling: .none)
            }),
        ]
    }

    func testLogitsAndLossAgainstFloat64() throws {
        for (name, c) in try configs() {
            let m = try model(c)
            let ref = ReferenceLlama(m)
            let r = try m.loss(tokens: tokens, batch: 2, length: 7, keepLogits: true)
            let expected = ref.logits(tokens, B: 2, T: 7)
            let got = r.logits!.scalars
            var err = 0.0, mag = 0.0
            for (i, row) in expected.enumerated() {
                for (j, e) in row.enumerated() { err = max(err, abs(Double(got[i * c.vocabSize + j]) - e)); mag = max(mag, abs(e)) }
            }
            XCTAssertLessThan(err / mag, 2e-6, name)
            let loss = ref.loss(tokens, B: 2, T: 7, targets: CausalLM.nextTokenTargets(tokens, batch: 2, length: 7))
            XCTAssertEqual(r.loss, loss, accuracy: 2e-6 * loss, name)
            XCTAssertEqual(r.positions, 12, name)
        }
    }

    /// dL/dθ of every parameter tensor, at a few scalars each, against float64 central differences.
    func testGradientsAgainstFiniteDifferences() throws {
        for (name, c) in try configs() {
            let m = try model(c)
            let g = try ParameterSet(zerosLike: m.parameters)
            _ = try m.loss(tokens: tokens, batch: 2, length: 7, gradients: g)
            var ref = ReferenceLlama(m)
            let targets = CausalLM.nextTokenTargets(tokens, batch: 2, length: 7)
            var rng = SplitMix64(seed: 9)
            var worst = 0.0
            for e in m.parameters.entries {
                for _ in 0..<3 {
                    let i = Int(rng.next() % UInt64(e.count))
                    let h = 1e-5, saved = ref.w[e.name]![i]
                    ref.w[e.name]![i] = saved + h
                    let up = ref.loss(tokens, B: 2, T: 7, targets: targets)
                    ref.w[e.name]![i] = saved - h
                    let down = ref.loss(tokens, B: 2, T: 7, targets: targets)
                    ref.w[e.name]![i] = saved
                    let fd = (up - down) / (2 * h), got = Double(g.scalars[e.offset + i])
                    worst = max(worst, abs(got - fd) / max(1e-2, abs(fd)))
                    XCTAssertEqual(got, fd, accuracy: 2e-4 * max(1e-1, abs(fd)) + 2e-6, "\(name): d\(e.name)[\(i)]")
                }
            }
            XCTAssertLessThan(worst, 1e-2, name)
        }
    }

    /// Gradients accumulate: two calls with scale ½ equal one call; and the sum over a batch equals
    /// the batch's.
    func testGradientAccumulation() throws {
        let m = try model(try tinyConfig())
        let one = try ParameterSet(zerosLike: m.parameters), two = try ParameterSet(zerosLike: m.parameters)
        _ = try m.loss(tokens: tokens, batch: 2, length: 7, gradients: one)
        _ = try m.loss(tokens: tokens, batch: 2, length: 7, gradients: two, gradientScale: 0.5)
        _ = try m.loss(tokens: tokens, batch: 2, length: 7, gradients: two, gradientScale: 0.5)
        for i in 0..<one.count { XCTAssertEqual(one.scalars[i], two.scalars[i], accuracy: 1e-6 * max(1, abs(one.scalars[i]))) }
    }

    /// Other attention variants: the model's gradients against finite differences of its own float32
    /// forward (the kernels themselves are checked against float64 in LongAttentionTests): three
    /// scalars of every tensor, Richardson-extrapolated central differences (steps h and h/2, the
    /// h² error cancelled), within 0.5% of the larger of |fd| and 0.02 (an absolute floor of 1e-4;
    /// measured: at most 0.06%).
    func testVariantGradientsAgainstFiniteDifferences() throws {
        let variants: [LayerAttention] = [.bigbird(blockSize: 2, windowBlocks: 1, randomBlocks: 1, seed: 1),
                                          .linear(featureMap: .elu), .infini(segment: 3, update: .delta)]
        for v in variants {
            let m = try model(try tinyConfig(attention: v))
            if v.hasBeta {   // non-zero gates, so both branches matter
                for l in 0..<2 { let b = m.parameters.pointer("model.layers.\(l).self_attn.infini_beta"); for h in 0..<4 { b[h] = Float(h) - 1.5 } }
            }
            let g = try ParameterSet(zerosLike: m.parameters)
            let base = try m.loss(tokens: tokens, batch: 2, length: 7, gradients: g).loss
            XCTAssertTrue(base.isFinite)
            var rng = SplitMix64(seed: 4)
            func central(_ p: UnsafeMutablePointer<Float>, _ h: Float) throws -> Double {
                let saved = p.pointee
                defer { p.pointee = saved }
                p.pointee = saved + h
                let up = try m.loss(tokens: tokens, batch: 2, length: 7).loss
                p.pointee = saved - h
                let down = try m.loss(tokens: tokens, batch: 2, length: 7).loss
                // The step actually taken (saved ± h rounds in float32).
                return (up - down) / (Double(saved + h) - Double(saved - h))
            }
            for e in m.parameters.entries {
                for _ in 0..<3 {
                    let i = Int(rng.next() % UInt64(e.count)), p = m.parameters.scalars + e.offset + i
                    let fd = (4 * (try central(p, 1e-2)) - (try central(p, 2e-2))) / 3, got = Double(g.scalars[e.offset + i])
                    XCTAssertEqual(got, fd, accuracy: 5e-3 * max(0.02, abs(fd)), "\(v.name): d\(e.name)[\(i)]")
                }
            }
        }
    }

    func testCheckpointRoundTrip() throws {
        let dir = NSTemporaryDirectory() + "lm-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (name, c) in try configs() + [("infini", try tinyConfig(attention: .infini(segment: 4, update: .linear)))] {
            let m = try model(c)
            try m.save(to: dir)
            let back = try CausalLM(directory: dir)
            XCTAssertEqual(back.config, c, name)
            XCTAssertEqual(back.parameters.entries, m.parameters.entries, name)
            XCTAssertEqual(Array(UnsafeBufferPointer(start: back.parameters.scalars, count: back.parameters.count)),
                           Array(UnsafeBufferPointer(start: m.parameters.scalars, count: m.parameters.count)), name)
        }
    }

    func testBadCheckpointsAreRefused() throws {
        let dir = NSTemporaryDirectory() + "lm-bad-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let m = try model(try tinyConfig())
        try m.save(to: dir)
        let good = try String(contentsOfFile: dir + "/config.json", encoding: .utf8)
        func refuses(_ config: String, _ what: String) {
            try? config.write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
            XCTAssertThrowsError(try CausalLM(directory: dir), what) { error in
                XCTAssertTrue(error is ModelError || error is SafeTensorsError, "\(what): \(error)")
            }
        }
        refuses(good.replacingOccurrences(of: "\"silu\"", with: "\"gelu\""), "hidden_act gelu")
        refuses(good.replacingOccurrences(of: "\"default\"", with: "\"longrope\""), "rope_type longrope")
        refuses(good.replacingOccurrences(of: "\"default\"", with: "\"llama3\""), "rope_type llama3 without its factors")
        XCTAssertTrue(good.contains("\"sliding_window\": null"))
        refuses(good.replacingOccurrences(of: "\"sliding_window\": null", with: "\"sliding_window\": 4"), "a window on llama")
        refuses(good.replacingOccurrences(of: "\"model_type\": \"llama\"", with: "\"model_type\": \"gemma3_text\""),
                "gemma3 with silu")
        refuses(good.replacingOccurrences(of: "\"model_type\": \"llama\"", with: "\"model_type\": \"llama\", \"final_logit_softcapping\": 30"),
                "logit soft-capping")
        refuses(good.replacingOccurrences(of: "\"model_type\": \"llama\"", with: "\"model_type\": \"mistral\", \"layer_types\": [\"full_attention\"]"),
                "layer_types of the wrong length")
        refuses(good.replacingOccurrences(of: "\"model_type\": \"llama\"", with: "\"model_type\": \"qwen2\""), "qwen2 without its biases")
        refuses(good.replacingOccurrences(of: "\"num_key_value_heads\": 2", with: "\"num_key_value_heads\": 3"), "heads not grouped")
        refuses(good.replacingOccurrences(of: "\"intermediate_size\": 7", with: "\"intermediate_size\": 8"), "shapes differ")
        refuses(good.replacingOccurrences(of: "\"num_hidden_layers\": 2", with: "\"num_hidden_layers\": 1"), "an extra layer's tensors")
        refuses(good.replacingOccurrences(of: "\"num_hidden_layers\": 2", with: "\"num_hidden_layers\": 3"), "a missing layer")
        refuses("{\"model_type\": \"gpt2\"}", "another architecture")
        refuses("[1, 2]", "not an object")
        try good.write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
        XCTAssertNoThrow(try CausalLM(directory: dir))
        // A truncated weights file.
        let data = FileManager.default.contents(atPath: dir + "/model.safetensors")!
        try data.prefix(data.count / 2).write(to: URL(fileURLWithPath: dir + "/model.safetensors"))
        XCTAssertThrowsError(try CausalLM(directory: dir))
    }

    func testBadTokensAreRefused() throws {
        let m = try model(try tinyConfig())
        XCTAssertThrowsError(try m.loss(tokens: [1, 2, 13], batch: 1, length: 3))
        XCTAssertThrowsError(try m.loss(tokens: [1, -1, 2], batch: 1, length: 3))
        XCTAssertThrowsError(try m.loss(tokens: [1, 2], batch: 1, length: 3))
        XCTAssertThrowsError(try m.loss(tokens: [1, 2, 3], batch: 1, length: 3, targets: [1, 2, 99]))
    }

    /// Decoding through a cache with sliding-window layers (rings of W + maxAppend - 1 rows): the
    /// prompt in chunks of maxAppend, then token by token past the rings' wrap, every step's logits
    /// equal the forward pass's over the whole prefix (which masks with the kernels' window), for
    /// the window families and every cache type (low-precision types within their storage error).
    func testDecodeThroughWindowedCacheMatchesForward() throws {
        let windowed = try familyConfigs().filter { $0.1.slidingWindow != nil }
        XCTAssertEqual(windowed.count, 3)
        let sequence: [Int32] = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3]
        for (name, c) in windowed {
            let m = try model(c)
            for type in KVCacheType.allCases {
                for (prompt, chunk) in [(7, 3), (7, 7), (1, 1)] {
                    var cache = try m.makeCache(positions: sequence.count, chunk: chunk, type: type)
                    XCTAssertEqual(cache.maxAppend, chunk)
                    for layer in 0..<c.layers {
                        XCTAssertEqual(cache.slots[layer], c.window(of: layer).map { min(sequence.count, $0 + chunk - 1) } ?? sequence.count)
                    }
                    var at = prompt
                    var logits = try m.step(Array(sequence[0..<prompt]), cache: &cache, threads: 1)
                    while true {
                        let r = try m.loss(tokens: Array(sequence[0..<at]), batch: 1, length: at, keepLogits: true)
                        let expected = Array(r.logits!.scalars.suffix(c.vocabSize))
                        let err = zip(logits, expected).map { abs(Double($0) - Double($1)) }.max()!
                        let mag = expected.map { abs(Double($0)) }.max()!
                        XCTAssertLessThan(err / max(1, mag), type == .float32 ? 2e-5 : 5e-2, "\(name) \(type) prompt \(prompt)/\(chunk) at \(at)")
                        if at == sequence.count { break }
                        logits = try m.step([sequence[at]], cache: &cache, threads: 1)
                        at += 1
                    }
                    XCTAssertEqual(cache.lengths, Array(repeating: sequence.count, count: c.layers))
                }
            }
            // Generation through the windowed cache equals recomputing the prefix (greedy).
            let prompt = Array(sequence[0..<5])
            let cached = try m.generate(prompt: prompt, maxTokens: 10)
            var context = prompt, slow = [Int32]()
            for _ in 0..<10 {
                let r = try m.loss(tokens: context, batch: 1, length: context.count, keepLogits: true)
                let row = Array(r.logits!.scalars.suffix(c.vocabSize))
                let next = Int32(row.indices.max { row[$0] < row[$1] || (row[$0] == row[$1] && $0 > $1) }!)
                slow.append(next)
                context.append(next)
            }
            XCTAssertEqual(cached, slow, name)
        }
    }

    /// Token-by-token generation through the KV cache equals recomputing the prefix each time
    /// (greedy), for float32 and int8 caches' first tokens.
    func testCachedGenerationMatchesRecompute() throws {
        for c in [try tinyConfig(), try tinyConfig(positions: .alibi)] {
            let m = try model(c)
            let prompt: [Int32] = [3, 1, 4, 1, 5]
            let cached = try m.generate(prompt: prompt, maxTokens: 12)
            var context = prompt, slow = [Int32]()
            for _ in 0..<12 {
                let r = try m.loss(tokens: context, batch: 1, length: context.count, keepLogits: true)
                let row = Array(r.logits!.scalars.suffix(c.vocabSize))
                let next = Int32(row.indices.max { row[$0] < row[$1] || (row[$0] == row[$1] && $0 > $1) }!)
                slow.append(next)
                context.append(next)
            }
            XCTAssertEqual(cached, slow)
            // Caches in fewer bits round the keys and values, not the choices: the same tokens.
            for type in [KVCacheType.bfloat16, .float16, .int8] {
                XCTAssertEqual(try m.generate(prompt: prompt, maxTokens: 12, cacheType: type), cached, "\(type)")
            }
            // Sampling is seeded.
            let s = SamplingOptions(temperature: 1, topK: 5, topP: 0.9, seed: 7)
            XCTAssertEqual(try m.generate(prompt: prompt, maxTokens: 8, sampling: s), try m.generate(prompt: prompt, maxTokens: 8, sampling: s))
        }
    }
}
