import AttentionTensor
import Foundation
import LongAttention
@testable import LongContextModel
import XCTest

/// Tiny GGUF models (Q8_0 attention and embedding, Q4_0 MLP) written by ``GGUFWriter``, for the
/// pretrained-model recipe: LoRA trained unmerged on quantised weights, and sparse attention
/// fitted into a pretrained model. The float64 reference (``ReferenceLlama``) reads the loaded
/// model itself: its float32 vectors and its matrices dequantised by the loader's own rules.
enum TinyGGUF {
    /// Q4_0 blocks of `x` (ggml's reference quantiser: d = max / −8 of the signed extreme, q = x/d + 8.5 clamped to 15).
    static func quantizeQ4_0(_ x: [Float]) -> [UInt8] {
        var out = [UInt8]()
        for b in stride(from: 0, to: x.count, by: 32) {
            var amax: Float = 0, mx: Float = 0
            for i in 0..<32 where abs(x[b + i]) > amax { (amax, mx) = (abs(x[b + i]), x[b + i]) }
            let d = mx / -8, id: Float = d == 0 ? 0 : 1 / d
            let h = Float16(d).bitPattern
            out += [UInt8(h & 0xFF), UInt8(h >> 8)]
            for j in 0..<16 {
                let q0 = UInt8(min(15, Int8(x[b + j] * id + 8.5))), q1 = UInt8(min(15, Int8(x[b + 16 + j] * id + 8.5)))
                out.append(q0 | (q1 << 4))
            }
        }
        return out
    }

    /// `m`'s parameters as a GGUF of `arch` (Gemma's norms stored as 1 + w), matrices quantised.
    static func write(_ m: CausalLM, arch: String, to path: String) throws {
        let c = m.config
        var w = GGUFWriter()
        func u32(_ v: Int) -> GGUFValue { .uint32(UInt32(v)) }
        w.set("general.architecture", .string(arch))
        w.set("\(arch).block_count", u32(c.layers))
        w.set("\(arch).embedding_length", u32(c.hiddenSize))
        w.set("\(arch).feed_forward_length", u32(c.intermediateSize))
        w.set("\(arch).attention.head_count", u32(c.heads))
        w.set("\(arch).attention.head_count_kv", u32(c.kvHeads))
        w.set("\(arch).attention.key_length", u32(c.headDim))
        w.set("\(arch).attention.value_length", u32(c.headDim))
        w.set("\(arch).context_length", u32(c.maxPositionEmbeddings))
        w.set("\(arch).attention.layer_norm_rms_epsilon", .float32(Float(c.rmsNormEps)))
        w.set("\(arch).rope.freq_base", .float32(10000))
        if let window = c.slidingWindow { w.set("\(arch).attention.sliding_window", u32(window)) }
        w.set("tokenizer.ggml.model", .string("gpt2"))
        w.set("tokenizer.ggml.tokens", .array((0..<c.vocabSize).map { .string("t\($0)") }))
        for e in m.parameters.entries {
            let name = try GGUFModelDescription.ggufName(e.name, sandwich: c.sandwichNorms)
            var values = Array(UnsafeBufferPointer(start: m.parameters.scalars + e.offset, count: e.count))
            if arch == "gemma3", e.name.hasSuffix("norm.weight") { values = values.map { $0 + 1 } }
            let shape = Array(e.shape.reversed())
            if e.shape.count == 2 {
                if e.name.contains(".mlp.") {
                    w.addTensor(name: name, shape: shape, type: .q4_0, data: quantizeQ4_0(values))
                } else {
                    w.addTensor(name: name, shape: shape, type: .q8_0, data: values.withUnsafeBufferPointer {
                        GGUFModelTests.quantizeQ8_0($0.baseAddress!, count: e.count) })
                }
            } else {
                w.addTensor(name: name, shape: shape, type: .f32, data: values.withUnsafeBytes { Array($0) })
            }
        }
        try w.write(to: path)
    }

    /// A random model of `config` (weights std 0.3, norms near identity) written as a GGUF at `path` and loaded back.
    static func model(_ c: ModelConfig, arch: String, path: String, seed: UInt64 = 3) throws -> CausalLM {
        let m = try CausalLM(config: c, seed: seed)
        var rng = SplitMix64(seed: seed &+ 17)
        for e in m.parameters.entries {
            let p = m.parameters.scalars + e.offset
            let centre = e.name.hasSuffix("norm.weight") ? Double(1 - c.normWeightOffset) : 0
            for i in 0..<e.count { p[i] = Float(centre + 0.3 * rng.nextNormal()) }
        }
        try write(m, arch: arch, to: path)
        let loaded = try CausalLM(gguf: path)
        precondition(!loaded.frozen.isEmpty)
        return loaded
    }

    static func llama() throws -> ModelConfig {
        var c = try ModelConfig(architecture: .llama, vocabSize: 40, hiddenSize: 32, intermediateSize: 64, layers: 2, heads: 4,
                                kvHeads: 2, headDim: 8, rmsNormEps: 1e-5, positions: .rope(theta: 10000, scaling: .none),
                                tieWordEmbeddings: true, maxPositionEmbeddings: 256)
        c.endTokenIds = []
        return c
    }

    /// Gemma 3's pieces: q/k norms, sandwich norms, GeGLU, √D embedding scale; six layers, the sixth full.
    static func gemma(window: Int = 4) throws -> ModelConfig {
        var c = try ModelConfig(architecture: .gemma3, vocabSize: 40, hiddenSize: 32, intermediateSize: 64, layers: 6, heads: 4,
                                kvHeads: 1, headDim: 32, rmsNormEps: 1e-6, positions: .rope(theta: 10000, scaling: .none),
                                tieWordEmbeddings: true, maxPositionEmbeddings: 256)
        c.queryKeyNorm = true; c.sandwichNorms = true; c.normWeightOffset = 1; c.activation = .geluTanh
        c.embeddingScale = Float(Double(32).squareRoot()); c.attentionScale = 1 / Double(32).squareRoot()
        c.slidingWindow = window
        c.layerKinds = (0..<6).map { ($0 + 1) % 6 == 0 ? .full : .sliding }
        c.endTokenIds = []
        return c
    }

    /// `m`'s frozen matrices dequantised by the loader's own rules, in float64.
    static func dequantized(_ m: CausalLM) -> [String: [Double]] {
        var out = [String: [Double]]()
        let shapes = Dictionary(uniqueKeysWithValues: CausalLM.layout(m.config).map { ($0.name, $0.shape) })
        for (name, w) in m.frozen {
            let (rows, cols) = (shapes[name]![0], shapes[name]![1])
            var f = [Float](repeating: 0, count: rows * cols)
            f.withUnsafeMutableBufferPointer { buf in
                for row in 0..<rows { w.row(row, columns: cols, into: buf.baseAddress! + row * cols) }
            }
            out[name] = f.map(Double.init)
        }
        return out
    }

    /// The float64 reference of `m`: its vectors, its frozen matrices (`base`, dequantised), and
    /// `lora` (A, B by PEFT name) merged as W + s·B·A in float64.
    static func reference(_ m: CausalLM, base: [String: [Double]]? = nil,
                          lora: (weights: [String: [Double]], adapter: LoRAAdapter)? = nil) -> ReferenceLlama {
        var r = ReferenceLlama(m)
        let base = base ?? dequantized(m)
        let shapes = Dictionary(uniqueKeysWithValues: CausalLM.layout(m.config).map { ($0.name, $0.shape) })
        for (name, w) in base {
            var d = w
            if let (lw, adapter) = lora, adapter.adaptedWeights.contains(name) {
                let (rows, cols) = (shapes[name]![0], shapes[name]![1])
                let a = lw[LoRAAdapter.peftName(name, "A")]!, b = lw[LoRAAdapter.peftName(name, "B")]!
                let s = Double(adapter.scale), rank = adapter.rank
                d.withUnsafeMutableBufferPointer { d in
                    for i in 0..<rows {
                        for t in 0..<rank {
                            let sb = s * b[i * rank + t]
                            for j in 0..<cols { d[i * cols + j] += sb * a[t * cols + j] }
                        }
                    }
                }
            }
            r.w[name] = d
        }
        return r
    }
}

final class QuantizedLoRATests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("qlora-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: directory) }

    let tokens: [Int32] = [1, 5, 12, 0, 7, 7, 3, 2, 9, 11, 4, 6, 8, 10, 39, 21]

    /// An adapter on every projection with B drawn at random too (so dA is not zero).
    func adapter(_ m: CausalLM) throws -> LoRAAdapter {
        let a = try LoRAAdapter(model: m, rank: 3, alpha: 6, targetModules: TempLoRAOptions().targetModules, seed: 4)
        var rng = SplitMix64(seed: 8)
        for e in a.parameters.entries where e.name.hasSuffix("lora_B.weight") {
            for i in 0..<e.count { a.parameters.scalars[e.offset + i] = Float(0.2 * rng.nextNormal()) }
        }
        return a
    }

    /// dL/dA and dL/dB through Q8_0/Q4_0 layers (dequantised panel by panel, in the backward too)
    /// against central differences of the float64 reference (h = 1e-4) along directions of the
    /// adapter's parameters: two random directions over every A and B, and one per module
    /// (q, k, v, o, gate, up, down: its A and B in every layer). Each directional derivative
    /// within 2e-4 relative of the central difference (plus 1e-7; measured ≤ 5e-5), and the loss within 1e-5 relative.
    func checkGradients(_ c: ModelConfig, arch: String) throws {
        let m = try TinyGGUF.model(c, arch: arch, path: directory.appendingPathComponent("\(arch).gguf").path)
        let adapter = try adapter(m)
        let am = try m.attaching(adapter)
        let ids = Array(tokens.prefix(12)), T = ids.count, targets = CausalLM.nextTokenTargets(ids, batch: 1, length: T)
        let unused = try ParameterSet(zerosLike: m.parameters)
        let r = try am.loss(tokens: ids, batch: 1, length: T, gradients: unused)
        let base = TinyGGUF.dequantized(m)
        var weights = [String: [Double]]()
        for e in adapter.parameters.entries {
            weights[e.name] = (0..<e.count).map { Double(adapter.parameters.scalars[e.offset + $0]) }
        }
        func refLoss(_ w: [String: [Double]]) -> Double {
            TinyGGUF.reference(m, base: base, lora: (w, adapter)).loss(ids, B: 1, T: T, targets: targets)
        }
        let l0 = refLoss(weights)
        XCTAssertEqual(r.loss, l0, accuracy: 1e-5 * abs(l0), "\(arch): loss against float64")
        var rng = SplitMix64(seed: 21)
        let groups: [(String, (String) -> Bool)] = [("all", { _ in true }), ("all", { _ in true })]
            + TempLoRAOptions().targetModules.map { mod in (mod, { (n: String) in n.contains(".\(mod).") }) }
        var worst = 0.0
        for (label, member) in groups {
            var direction = [String: [Double]](), analytic = 0.0
            for e in adapter.parameters.entries {
                let v = (0..<e.count).map { _ in member(e.name) ? rng.nextNormal() : 0 }
                direction[e.name] = v
                for i in 0..<e.count { analytic += Double(am.lora!.gradients.scalars[e.offset + i]) * v[i] }
            }
            let h = 1e-4
            var plus = weights, minus = weights
            for (name, v) in direction {
                for i in v.indices { plus[name]![i] += h * v[i]; minus[name]![i] -= h * v[i] }
            }
            let numeric = (refLoss(plus) - refLoss(minus)) / (2 * h)
            XCTAssertGreaterThan(abs(numeric), 1e-3, "\(arch) \(label): the directional derivative is not ~0")
            worst = max(worst, abs(analytic - numeric) / abs(numeric))
            XCTAssertLessThanOrEqual(abs(analytic - numeric), 2e-4 * abs(numeric) + 1e-7, "\(arch) \(label): \(analytic) vs \(numeric)")
        }
        print("\(arch): \(groups.count) directional derivatives of the adapter, worst relative error \(worst)")
    }

    func testAdapterGradientsThroughQuantizedLlamaLayers() throws { try checkGradients(try TinyGGUF.llama(), arch: "llama") }

    func testAdapterGradientsThroughQuantizedGemma3Layers() throws { try checkGradients(try TinyGGUF.gemma(), arch: "gemma3") }

    /// The attached adapter's logits equal those of the float model holding the dequantised weights
    /// with the adapter merged (float32, 1e-5 of the largest logit), and generation's decoding step applies it too.
    func testAttachedAdapterMatchesMergedWeights() throws {
        let m = try TinyGGUF.model(try TinyGGUF.llama(), arch: "llama", path: directory.appendingPathComponent("m.gguf").path)
        let adapter = try adapter(m)
        let am = try m.attaching(adapter)
        let x = try am.loss(tokens: tokens, batch: 1, length: tokens.count, keepLogits: true).logits!.scalars
        var weights = [String: [Double]]()
        for e in adapter.parameters.entries {
            weights[e.name] = (0..<e.count).map { Double(adapter.parameters.scalars[e.offset + $0]) }
        }
        let ref = TinyGGUF.reference(m, lora: (weights, adapter)).logits(tokens, B: 1, T: tokens.count).flatMap { $0 }
        let mag = ref.map(abs).max()!
        let err = zip(x, ref).map { abs(Double($0) - $1) }.max()!
        XCTAssertLessThanOrEqual(err, 1e-5 * mag)
        // Without the adapter the logits differ (B is not zero here).
        let base = try m.loss(tokens: tokens, batch: 1, length: tokens.count, keepLogits: true).logits!.scalars
        XCTAssertGreaterThan(zip(x, base).map { abs($0 - $1) }.max()!, 1e-3)
        // A decoding step through the KV cache sees the adapter.
        var cache = try am.makeCache(positions: tokens.count, chunk: tokens.count)
        let last = try am.step(tokens, cache: &cache, threads: 1)
        let V = m.config.vocabSize
        let want = Array(x[(tokens.count - 1) * V..<(tokens.count * V)])
        XCTAssertLessThanOrEqual(zip(last, want).map { abs($0 - $1) }.max()!, 1e-4 * Float(mag))
    }

    /// Merging into frozen weights, and an adapter of another model, are refused with typed errors.
    func testFrozenWeightsRefuseMergingAndForeignAdapters() throws {
        let m = try TinyGGUF.model(try TinyGGUF.llama(), arch: "llama", path: directory.appendingPathComponent("m.gguf").path)
        let adapter = try LoRAAdapter(model: m, rank: 2, alpha: 2, targetModules: ["q_proj"], seed: 1)
        XCTAssertThrowsError(try adapter.mergedModel(m)) { e in
            guard case ModelError.unsupportedModel(let operation, let requirement) = e else { return XCTFail("\(e)") }
            XCTAssertTrue(operation.contains("merging") && requirement.contains("frozen"), "\(e)")
        }
        let other = try CausalLM(config: try TinyGGUF.gemma(), seed: 1)
        let foreign = try LoRAAdapter(model: other, rank: 2, alpha: 2, targetModules: ["q_proj"], seed: 1)
        XCTAssertThrowsError(try m.attaching(foreign)) { e in
            guard case ModelError.layoutMismatch(let what, _, _) = e else { return XCTFail("\(e)") }
            XCTAssertEqual(what, "the LoRA adapter")
        }
    }

    /// Temp-LoRA on the quantised model: a repeated text's later chunks score better with the
    /// adapter than without; the base model is unchanged afterwards.
    func testTempLoRAOnQuantizedModelLearnsARepeatedText() throws {
        let m = try TinyGGUF.model(try TinyGGUF.llama(), arch: "llama", path: directory.appendingPathComponent("m.gguf").path)
        let before = try m.loss(tokens: tokens, batch: 1, length: tokens.count).loss
        var o = TempLoRAOptions()
        (o.chunk, o.window, o.epochs, o.rank, o.alpha, o.learningRate) = (16, 16, 2, 4, 8, 1e-2)
        let text = Array(repeating: tokens, count: 6).flatMap { $0 }
        let chunks = try runTempLoRA(model: m, tokens: text, options: o)
        XCTAssertEqual(chunks.count, 6)
        XCTAssertEqual(chunks[0].adaptedLoss, chunks[0].baseLoss, accuracy: 1e-5)
        XCTAssertLessThan(chunks[5].adaptedLoss, 0.8 * chunks[5].baseLoss)
        XCTAssertEqual(try m.loss(tokens: tokens, batch: 1, length: tokens.count).loss, before)
    }
}

final class SparseRefitTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("refit-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: directory) }

    func tokens(_ n: Int) -> [Int32] { (0..<n).map { Int32(($0 * 7 + 3) % 40) } }

    func maxRelative(_ x: [Float], _ ref: [Double]) -> Double {
        let mag = ref.map(abs).max()!
        return zip(x, ref).map { abs(Double($0) - $1) }.max()! / mag
    }

    /// BigBird layers (block 4, window 3, 2 random blocks: 10 blocks, so sparse) fitted into a
    /// quantised GQA + RoPE model give the logits of exact attention under the plan's dense mask
    /// (float64 reference, 2e-5 of the largest logit).
    func testBigBirdRefitEqualsExactAttentionUnderThePlanMask() throws {
        let m = try TinyGGUF.model(try TinyGGUF.llama(), arch: "llama", path: directory.appendingPathComponent("m.gguf").path)
        let sparse = try m.refitting(.bigbird(blockSize: 4, windowBlocks: 3, randomBlocks: 2, seed: 9))
        let T = 40, ids = tokens(T)
        XCTAssertEqual(sparse.config.attention, Array(repeating: .bigbird(blockSize: 4, windowBlocks: 3, randomBlocks: 2, seed: 9), count: 2))
        let x = try sparse.loss(tokens: ids, batch: 1, length: T, keepLogits: true).logits!.scalars
        var ref = TinyGGUF.reference(sparse)
        let plans = try (0..<2).map { try sparse.bigBirdPlan(layer: $0, length: T) }
        XCTAssertLessThan(plans[0].attendedBlocks(head: 0), 10 * 11 / 2, "the plan is sparse")
        ref.keyMask = { l, h, i, j in plans[l].attends(head: h, query: i, key: j) }
        let want = ref.logits(ids, B: 1, T: T).flatMap { $0 }
        XCTAssertLessThanOrEqual(maxRelative(x, want), 2e-5)
        // And it differs from the exact model's logits (the mask matters at this length).
        let exact = TinyGGUF.reference(m).logits(ids, B: 1, T: T).flatMap { $0 }
        XCTAssertGreaterThan(maxRelative(x, exact), 1e-3)
        // The sequence losses the sparse command reports equal the loss's own.
        let losses = try sparse.sequenceLosses(ids, rows: 7)
        let mean = losses.dropLast().reduce(0.0) { $0 + Double($1) } / Double(T - 1)
        XCTAssertEqual(mean, try sparse.loss(tokens: ids, batch: 1, length: T).loss, accuracy: 1e-5)
        XCTAssertTrue(losses.last!.isNaN)
    }

    /// A sliding window imposed on full layers (the layer keeps its RoPE) equals the reference's
    /// windowed attention; on Gemma 3 the refit of full layers leaves the sliding layers as trained,
    /// and BigBird in Gemma's full layer equals the dense plan mask.
    func testSlidingAndGemmaRefits() throws {
        let m = try TinyGGUF.model(try TinyGGUF.llama(), arch: "llama", path: directory.appendingPathComponent("m.gguf").path)
        let T = 24, ids = tokens(T)
        let sliding = try m.refitting(.sliding(window: 5))
        XCTAssertEqual(sliding.config.window(of: 0), 5)
        XCTAssertFalse(sliding.config.isSliding(0))
        let x = try sliding.loss(tokens: ids, batch: 1, length: T, keepLogits: true).logits!.scalars
        XCTAssertLessThanOrEqual(maxRelative(x, TinyGGUF.reference(sliding).logits(ids, B: 1, T: T).flatMap { $0 }), 2e-5)
        // Decoding through the KV cache with the imposed window gives the same last logits.
        var cache = try sliding.makeCache(positions: T, chunk: T)
        let last = try sliding.step(ids, cache: &cache, threads: 1)
        let V = m.config.vocabSize
        XCTAssertLessThanOrEqual(zip(last, x[(T - 1) * V..<(T * V)]).map { abs($0 - $1) }.max()!, 1e-4 * x.map(abs).max()!)

        let g = try TinyGGUF.model(try TinyGGUF.gemma(window: 4), arch: "gemma3", path: directory.appendingPathComponent("g.gguf").path)
        let gb = try g.refitting(.bigbird(blockSize: 4, windowBlocks: 3, randomBlocks: 2, seed: 2), layers: .full)
        for l in 0..<6 {
            XCTAssertEqual(gb.config.window(of: l), l == 5 ? nil : 4, "layer \(l)")
            XCTAssertEqual(gb.config.attention[l] == .exact, l != 5, "layer \(l)")
        }
        let y = try gb.loss(tokens: ids, batch: 1, length: T, keepLogits: true).logits!.scalars
        var ref = TinyGGUF.reference(gb)
        let plan = try gb.bigBirdPlan(layer: 5, length: T)
        ref.keyMask = { l, h, i, j in l != 5 || plan.attends(head: h, query: i, key: j) }
        XCTAssertLessThanOrEqual(maxRelative(y, ref.logits(ids, B: 1, T: T).flatMap { $0 }), 2e-5)
        // Gemma's own window everywhere: the full layer slides at 4 with its own RoPE.
        let gs = try g.refitting(.sliding(window: 4), layers: .all)
        XCTAssertEqual((0..<6).map { gs.config.window(of: $0) }, Array(repeating: 4, count: 6))
        XCTAssertFalse(gs.config.isSliding(5))
    }

    /// Infini-Attention fitted into the quantised model: with one segment covering the sequence and
    /// β = −30 (the memory's share e^−30) the logits are exact attention's (1e-5 of the largest);
    /// with segments shorter than the sequence the memory is read, and the loss has a gradient in every β.
    func testInfiniRefitStartsLocalAndTrainsItsGates() throws {
        let m = try TinyGGUF.model(try TinyGGUF.llama(), arch: "llama", path: directory.appendingPathComponent("m.gguf").path)
        let T = 24, ids = tokens(T)
        let local = try m.refitting(.infini(segment: 64, update: .linear, beta: -30))
        XCTAssertEqual(local.parameters.pointer("model.layers.1.self_attn.infini_beta")[3], -30)
        let x = try local.loss(tokens: ids, batch: 1, length: T, keepLogits: true).logits!.scalars
        XCTAssertLessThanOrEqual(maxRelative(x, TinyGGUF.reference(m).logits(ids, B: 1, T: T).flatMap { $0 }), 1e-5)
        let fitted = try m.refitting(.infini(segment: 8, update: .delta, beta: -2))
        let adapter = try LoRAAdapter(model: fitted, rank: 2, alpha: 2, targetModules: ["q_proj", "v_proj"], seed: 3)
        let am = try fitted.attaching(adapter)
        let g = try ParameterSet(zerosLike: fitted.parameters)
        _ = try am.loss(tokens: ids, batch: 1, length: T, gradients: g)
        for l in 0..<2 {
            let gb = g.pointer("model.layers.\(l).self_attn.infini_beta")
            XCTAssertTrue((0..<4).allSatisfy { gb[$0] != 0 && gb[$0].isFinite }, "layer \(l): dβ")
        }
        let lg = am.lora!.gradients
        XCTAssertGreaterThan(UnsafeBufferPointer(start: lg.scalars, count: lg.count).map(abs).max()!, 0)
    }

    /// Refits the kernels cannot compute are refused with typed errors naming the layer or the option.
    func testBadRefitsAreRefused() throws {
        let g = try TinyGGUF.model(try TinyGGUF.gemma(window: 4), arch: "gemma3", path: directory.appendingPathComponent("g.gguf").path)
        func refused(_ f: @autoclosure () throws -> CausalLM, _ what: String) {
            XCTAssertThrowsError(try f(), what) { e in
                switch e as? ModelError {
                case .unsupportedRefit?, .invalidOption?, .invalidConfig?: break
                default: XCTFail("\(what): \(e)")
                }
            }
        }
        refused(try g.refitting(.bigbird(blockSize: 4, windowBlocks: 3, randomBlocks: 2, seed: 1), layers: .all), "BigBird on sliding layers")
        XCTAssertThrowsError(try g.refitting(.bigbird(blockSize: 4, windowBlocks: 3, randomBlocks: 2, seed: 1), layers: .all)) {
            guard case ModelError.unsupportedRefit(0, "BigBird", _)? = $0 as? ModelError else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try g.refitting(.sliding(window: 0))) {
            XCTAssertEqual($0 as? ModelError, .invalidOption(name: "sliding window W", value: "0", expected: ">= 1"))
        }
        refused(try g.refitting(.sliding(window: 7), layers: .all), "another window on sliding layers")
        refused(try g.refitting(.sliding(window: 0)), "window 0")
        refused(try g.refitting(.bigbird(blockSize: 4, windowBlocks: 2, randomBlocks: 2, seed: 1)), "even window")
    }
}
