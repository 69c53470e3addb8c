import AttentionTensor
import Foundation
import LongAttention
@testable import LongContextModel
import XCTest

/// GGUF models written here by ``GGUFWriter`` in llama.cpp's conventions (Q/K rows of `llama`
/// interleaved, Gemma's norms stored as `1 + w`, GGUF's innermost-first shapes), loaded back by
/// ``CausalLM/init(gguf:file:)`` and compared with the same network held as transformers-style
/// float32 parameters (itself checked against the float64 reference in CausalLMTests), in F32 and
/// in Q8_0 (weights rounded through Q8_0 first on both sides, so the two compute the same function).
final class GGUFModelTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("gguf-model-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: directory) }

    /// A model with weights of std 0.3 (norms near their identity).
    func model(_ c: ModelConfig, seed: UInt64 = 5) throws -> CausalLM {
        let m = try CausalLM(config: c, seed: seed)
        var rng = SplitMix64(seed: seed &+ 11)
        for e in m.parameters.entries {
            let p = m.parameters.scalars + e.offset
            let centre = e.name.hasSuffix("norm.weight") ? Double(1 - c.normWeightOffset) : 0
            for i in 0..<e.count { p[i] = Float(centre + 0.3 * rng.nextNormal()) }
        }
        return m
    }

    /// Q8_0 blocks of `x` (a multiple of 32 values): per block d = max|x| / 127 as f16, q = round(x / d).
    static func quantizeQ8_0(_ x: UnsafePointer<Float>, count: Int) -> [UInt8] {
        var out = [UInt8]()
        for b in stride(from: 0, to: count, by: 32) {
            var amax: Float = 0
            for i in 0..<32 { amax = max(amax, abs(x[b + i])) }
            let d = amax / 127, id: Float = d == 0 ? 0 : 1 / d
            let h = Float16(d).bitPattern
            out += [UInt8(h & 0xFF), UInt8(h >> 8)]
            for i in 0..<32 { out.append(UInt8(bitPattern: Int8((x[b + i] * id).rounded(.toNearestOrAwayFromZero)))) }
        }
        return out
    }

    static func bytes(_ v: [Float]) -> [UInt8] { v.withUnsafeBytes { Array($0) } }

    /// GGUF's name of each parameter (the inverse of the loader's table) and the metadata of `arch`.
    func write(_ m: CausalLM, arch: String, quantize: Bool, to url: URL, edit: (inout GGUFWriter) -> Void = { _ in }) throws {
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
        if case .rope(let theta, _) = c.positions { w.set("\(arch).rope.freq_base", .float32(Float(theta))) }
        if let window = c.slidingWindow { w.set("\(arch).attention.sliding_window", u32(window)) }
        w.set("tokenizer.ggml.model", .string("gpt2"))
        w.set("tokenizer.ggml.tokens", .array((0..<c.vocabSize).map { .string("t\($0)") }))
        edit(&w)
        for e in m.parameters.entries {
            let name = try GGUFModelDescription.ggufName(e.name, sandwich: c.sandwichNorms)
            var values = Array(UnsafeBufferPointer(start: m.parameters.scalars + e.offset, count: e.count))
            if arch == "gemma3", e.name.hasSuffix("norm.weight") { values = values.map { $0 + 1 } }
            if arch == "llama", e.name.hasSuffix("q_proj.weight") || e.name.hasSuffix("k_proj.weight") {
                // llama.cpp's permutation: GGUF row h·hd + 2i + s holds transformers' row h·hd + s·hd/2 + i.
                let rows = e.shape[0], cols = e.shape[1], hd = c.headDim
                var permuted = values
                for h in 0..<(rows / hd) {
                    for s in 0..<2 {
                        for i in 0..<(hd / 2) {
                            let from = h * hd + s * hd / 2 + i, to = h * hd + 2 * i + s
                            for j in 0..<cols { permuted[to * cols + j] = values[from * cols + j] }
                        }
                    }
                }
                values = permuted
            }
            let shape = Array(e.shape.reversed())
            if quantize, e.shape.count == 2 {
                w.addTensor(name: name, shape: shape, type: .q8_0, data: values.withUnsafeBufferPointer {
                    Self.quantizeQ8_0($0.baseAddress!, count: e.count) })
            } else {
                w.addTensor(name: name, shape: shape, type: .f32, data: Self.bytes(values))
            }
        }
        try w.write(to: url.path)
    }

    /// Rounds every weight matrix of `m` through Q8_0 in place (what a Q8_0 file holds).
    func roundThroughQ8_0(_ m: CausalLM) throws {
        for e in m.parameters.entries where e.shape.count == 2 {
            let p = m.parameters.scalars + e.offset
            let blocks = Self.quantizeQ8_0(p, count: e.count)
            try blocks.withUnsafeBytes { try GGMLType.q8_0.dequantize($0.baseAddress!, count: e.count, into: p) }
        }
    }

    let tokens: [Int32] = [1, 5, 12, 0, 7, 7, 3, 2, 9, 11, 4, 6, 8, 10]   // B = 2, T = 7

    func assertSameLogits(_ a: CausalLM, _ b: CausalLM, tolerance: Double, _ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let x = try a.loss(tokens: tokens, batch: 2, length: 7, keepLogits: true).logits!.scalars
        let y = try b.loss(tokens: tokens, batch: 2, length: 7, keepLogits: true).logits!.scalars
        XCTAssertEqual(x.count, y.count, name, file: file, line: line)
        var err: Float = 0, mag: Float = 0
        for i in 0..<min(x.count, y.count) { err = max(err, abs(x[i] - y[i])); mag = max(mag, abs(x[i])) }
        XCTAssertLessThanOrEqual(Double(err / max(mag, 1)), tolerance, name, file: file, line: line)
    }

    func llamaConfig(D: Int = 12, F: Int = 7, tied: Bool = true) throws -> ModelConfig {
        var c = try ModelConfig(architecture: .llama, vocabSize: 13, hiddenSize: D, intermediateSize: F, layers: 2, heads: 4,
                                kvHeads: 2, headDim: 4, rmsNormEps: 1e-5, positions: .rope(theta: 500, scaling: .none),
                                tieWordEmbeddings: tied, maxPositionEmbeddings: 64)
        c.endTokenIds = []
        return c
    }

    /// The loader's Gemma 3 rules: every sixth layer full, sliding layers at base 10,000, √D
    /// embedding scale, head_dim^−1/2 score scale, GeGLU, (1 + w) norms, q/k norms.
    func gemmaConfig(D: Int = 12, F: Int = 7, window: Int = 3) throws -> ModelConfig {
        var c = try ModelConfig(architecture: .gemma3, vocabSize: 13, hiddenSize: D, intermediateSize: F, layers: 7, heads: 4,
                                kvHeads: 1, headDim: 4, rmsNormEps: 1e-6, positions: .rope(theta: 1000, scaling: .none),
                                tieWordEmbeddings: true, maxPositionEmbeddings: 64)
        c.queryKeyNorm = true; c.sandwichNorms = true; c.normWeightOffset = 1; c.activation = .geluTanh
        c.embeddingScale = Float(Double(D).squareRoot()); c.attentionScale = 1 / Double(c.headDim).squareRoot()
        c.slidingWindow = window
        c.layerKinds = (0..<7).map { ($0 + 1) % 6 == 0 ? .full : .sliding }
        c.slidingPositions = .rope(theta: 10000, scaling: .none)
        return c
    }

    func testFamiliesLoadAsTheirFloat32Networks() throws {
        var qwen2 = try llamaConfig(tied: false)
        qwen2.architecture = .qwen2; qwen2.qkvBias = true
        var qwen3 = try llamaConfig()
        qwen3.architecture = .qwen3; qwen3.queryKeyNorm = true
        let cases: [(String, String, ModelConfig)] = [
            ("llama, tied (SmolLM2's shape)", "llama", try llamaConfig()),
            ("llama, separate head", "llama", try llamaConfig(tied: false)),
            ("qwen2 biases", "qwen2", qwen2),
            ("qwen3 q/k norms", "qwen3", qwen3),
            ("gemma3, 5 sliding + full + sliding", "gemma3", try gemmaConfig()),
        ]
        for (name, arch, c) in cases {
            let m = try model(c)
            let url = directory.appendingPathComponent("\(arch).gguf")
            try write(m, arch: arch, quantize: false, to: url)
            let loaded = try CausalLM(gguf: url.path)
            XCTAssertEqual(loaded.config.layerKinds, c.layerKinds, name)
            XCTAssertEqual(loaded.config.tieWordEmbeddings, c.tieWordEmbeddings, name)
            XCTAssertFalse(loaded.frozen.isEmpty, name)
            try assertSameLogits(m, loaded, tolerance: 2e-6, name)
        }
    }

    func testQ8_0WeightsAreDequantisedPanelByPanel() throws {
        // Columns of 32 and 64 (whole Q8_0 blocks); 49 vocabulary rows (not a multiple of any panel).
        var c = try ModelConfig(architecture: .llama, vocabSize: 49, hiddenSize: 32, intermediateSize: 64, layers: 2, heads: 4,
                                kvHeads: 2, headDim: 8, rmsNormEps: 1e-5, positions: .rope(theta: 500, scaling: .none),
                                tieWordEmbeddings: true, maxPositionEmbeddings: 64)
        c.endTokenIds = []
        let m = try model(c)
        try roundThroughQ8_0(m)
        let url = directory.appendingPathComponent("q8.gguf")
        try write(m, arch: "llama", quantize: true, to: url)
        let loaded = try CausalLM(gguf: url.path)
        try assertSameLogits(m, loaded, tolerance: 2e-6, "q8_0")
        // Cached decoding on the mapped weights equals recomputation.
        let prompt: [Int32] = [3, 1, 4, 1, 5]
        let cached = try loaded.generate(prompt: prompt, maxTokens: 6)
        XCTAssertEqual(cached, try m.generate(prompt: prompt, maxTokens: 6))
    }

    func testBadModelsAreRefusedByName() throws {
        let m = try model(try llamaConfig())
        func refuses(_ what: String, _ edit: (inout GGUFWriter) -> Void, arch: String = "llama") {
            let url = directory.appendingPathComponent("bad.gguf")
            do {
                try write(m, arch: arch, quantize: false, to: url, edit: edit)
                XCTAssertThrowsError(try CausalLM(gguf: url.path), what) { error in
                    XCTAssertTrue("\(error)".contains(what), "\(what): \(error)")
                }
            } catch { XCTFail("\(what): writing failed: \(error)") }
        }
        refuses("general.architecture = \"bert\"", { _ in }, arch: "bert")
        refuses("partial rotary", { $0.set("llama.rope.dimension_count", .uint32(2)) })
        refuses("vocab_size", { $0.set("llama.vocab_size", .uint32(14)) })
        refuses("blk.0.extra.weight", { $0.addTensor(name: "blk.0.extra.weight", shape: [4], type: .f32, data: Self.bytes([1, 2, 3, 4])) })
        refuses("rope.scaling.type", { $0.set("llama.rope.scaling.type", .string("longrope")) })
        // A tensor the config needs is absent: a file with two layers' tensors claiming three.
        refuses("blk.2", { $0.set("llama.block_count", .uint32(3)) })
        // A tensor of the wrong shape: the embedding claimed wider.
        refuses("token_embd.weight", { $0.set("llama.embedding_length", .uint32(16)) })
    }
}
