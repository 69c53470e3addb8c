import AttentionTensor
import Foundation

/// Models in llama.cpp's GGUF format: the architectures `llama` (SmolLM2, Llama, Mistral),
/// `qwen2`, `qwen3` and `gemma3`, mapped onto the families of ``ModelConfig``.
///
/// Weight matrices stay in the file: memory-mapped, read in place as ``WeightMatrix/blocks(_:)``
/// (dequantised a panel at a time by ggml's reference rules) or, for F32 tensors, as float32 rows;
/// only the vectors (norms, biases) are copied into ``CausalLM/parameters``. Two conventions of
/// llama.cpp's converter are undone on the way in:
/// - for `llama`, the rows of Q and K are permuted (pairs interleaved, llama.cpp's "normal" RoPE);
///   rows are read back in transformers' "rotate half" order through a row map;
/// - for `gemma3`, RMSNorm weights hold `1 + w` already (``ModelConfig/normWeightOffset`` 0), every
///   sixth layer is full, sliding layers rotate with base 10,000, and scores are scaled by
///   `head_dim^−1/2`: none of the three is stored in the file.
extension CausalLM {
    /// Loads `path`, a GGUF v2 or v3 file. Throws ``GGUFError`` for a damaged file and
    /// ``ModelError`` for a model this implementation does not compute (naming the key or tensor).
    ///
    /// `matmul` chooses how decoding multiplies by the quantised matrices (``MatmulMode``).
    public convenience init(gguf path: String, file opened: GGUFFile? = nil, matmul: MatmulMode = .exact) throws {
        let file = try opened ?? GGUFFile(path: path)
        let meta = file
        let config = try GGUFModelDescription.config(meta)
        let layout = Self.layout(config)
        let arch = try meta.requiredString("general.architecture")
        var frozen = [String: WeightMatrix]()
        var vectors = [(name: String, shape: [Int])]()
        var sources = [String: GGUFTensorInfo]()
        for (name, shape) in layout {
            let ggufName = try GGUFModelDescription.ggufName(name, sandwich: config.sandwichNorms)
            guard let info = file.tensor(named: ggufName) else {
                throw ModelError.missingTensor(name: ggufName, shape: Array(shape.reversed()), file: path)
            }
            // GGUF lists dimensions innermost first: a [out, in] matrix is stored as [in, out].
            guard info.shape == Array(shape.reversed()) else {
                throw ModelError.misshapenTensor(name: ggufName, shape: info.shape, expected: Array(shape.reversed()), file: path)
            }
            sources[name] = info
            if shape.count == 2 {
                var rowOrder: [Int]? = nil
                if arch == "llama", name.hasSuffix("q_proj.weight") || name.hasSuffix("k_proj.weight") {
                    rowOrder = GGUFModelDescription.unpermutedRows(rows: shape[0], heads: name.hasSuffix("q_proj.weight") ? config.heads : config.kvHeads)
                }
                frozen[name] = try Self.mappedMatrix(file, info, rows: shape[0], columns: shape[1], rowOrder: rowOrder)
            } else {
                vectors.append((name, shape))
            }
        }
        let parameters = try ParameterSet(layout: vectors)
        for (name, shape) in vectors {
            let info = sources[name]!, n = shape.reduce(1, *)
            try file.withBytes(of: info) { raw in
                try info.type.dequantize(raw.baseAddress!, count: n, into: parameters.pointer(name))
            }
            if let bad = (0..<n).first(where: { !parameters.pointer(name)[$0].isFinite }) {
                throw ModelError.nonFiniteTensor(name: info.name, file: path, index: bad)
            }
        }
        let used = Set(sources.values.map(\.name))
        if let extra = file.tensors.map(\.name).first(where: { !used.contains($0) }) {
            throw ModelError.unexpectedTensor(name: extra, file: path)
        }
        try self.init(config: config, parameters: parameters, frozen: frozen, storage: file, matmul: matmul)
    }

    /// A `[rows, columns]` matrix read in place: F32 rows directly (when no row map is needed),
    /// any other type dequantised a panel of rows at a time.
    static func mappedMatrix(_ file: GGUFFile, _ info: GGUFTensorInfo, rows: Int, columns: Int, rowOrder: [Int]?) throws -> WeightMatrix {
        let type = info.type
        guard type.isDequantizable else {
            throw ModelError.unsupportedTensorType(name: info.name, type: "\(type)")
        }
        guard columns % type.blockSize == 0, let rowBytes = type.byteCount(elements: columns) else {
            throw ModelError.invalidCheckpoint(file: "", reason: "\(info.name): rows of \(columns) are not whole \(type) blocks")
        }
        let base = UnsafeMutableRawPointer(mutating: file.bytes(of: info).baseAddress!)
        if type == .f32, rowOrder == nil {
            return .dense(base.assumingMemoryBound(to: Float.self))
        }
        nonisolated(unsafe) let source = base
        let bytes = rowBytes * rows
        let quantized = QuantizedMatrix(type: type, base: UnsafeRawPointer(base), rows: rows, columns: columns, rowOrder: rowOrder)
        if let order = rowOrder {
            return .blocks(BlockRows(rows: rows, columns: columns, bytes: bytes, quantized: quantized) { range, out in
                for (i, r) in range.enumerated() {
                    try! type.dequantize(source + order[r] * rowBytes, count: columns, into: out + i * columns)
                }
            })
        }
        return .blocks(BlockRows(rows: rows, columns: columns, bytes: bytes, quantized: quantized) { range, out in
            try! type.dequantize(source + range.lowerBound * rowBytes, count: range.count * columns, into: out)
        })
    }
}

/// How GGUF metadata and tensor names map onto ``ModelConfig`` and transformers' names.
enum GGUFModelDescription {
    /// The GGUF tensor name of a transformers parameter name (`sandwich`: Gemma's four norms per layer).
    static func ggufName(_ name: String, sandwich: Bool) throws -> String {
        switch name {
        case "model.embed_tokens.weight": return "token_embd.weight"
        case "model.norm.weight": return "output_norm.weight"
        case "lm_head.weight": return "output.weight"
        default: break
        }
        let parts = name.split(separator: ".")
        guard parts.count >= 4, parts[0] == "model", parts[1] == "layers", let layer = Int(parts[2]) else {
            throw ModelError.invalidCheckpoint(file: "", reason: "no GGUF name for \(name)")
        }
        let rest = parts[3...].joined(separator: ".")
        let table: [String: String] = [
            "input_layernorm.weight": "attn_norm.weight",
            "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
            "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
            "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias", "self_attn.v_proj.bias": "attn_v.bias",
            "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
            "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
        ]
        if let g = table[rest] { return "blk.\(layer).\(g)" }
        return "blk.\(layer).\(try normName(rest, sandwich: sandwich))"
    }

    /// Norm names that depend on the family: with Gemma's four norms, transformers'
    /// `post_attention_layernorm` is GGUF's `post_attention_norm` and `pre_feedforward_layernorm`
    /// its `ffn_norm`; otherwise `post_attention_layernorm` (the norm before the MLP) is `ffn_norm`.
    static func normName(_ rest: String, sandwich: Bool) throws -> String {
        switch rest {
        case "post_attention_layernorm.weight": return sandwich ? "post_attention_norm.weight" : "ffn_norm.weight"
        case "pre_feedforward_layernorm.weight": return "ffn_norm.weight"
        case "post_feedforward_layernorm.weight": return "post_ffw_norm.weight"
        default: throw ModelError.invalidCheckpoint(file: "", reason: "no GGUF name for layer tensor \(rest)")
        }
    }

    /// Row `r` of transformers' Q (or K) is row `map[r]` of llama.cpp's: its converter stores
    /// each head's rows `(i, i + hd/2)` as the pairs `(2i, 2i + 1)`.
    static func unpermutedRows(rows: Int, heads: Int) -> [Int] {
        let hd = rows / heads, half = hd / 2
        var map = [Int](repeating: 0, count: rows)
        for h in 0..<heads {
            for s in 0..<2 {
                for i in 0..<half { map[h * hd + s * half + i] = h * hd + 2 * i + s }
            }
        }
        return map
    }

    /// The model's config from `{arch}.*` and `tokenizer.ggml.*` metadata.
    static func config(_ m: GGUFFile) throws -> ModelConfig {
        let arch = try m.requiredString("general.architecture")
        let family: ModelConfig.Architecture
        switch arch {
        case "llama": family = .llama
        case "qwen2": family = .qwen2
        case "qwen3": family = .qwen3
        case "gemma3": family = .gemma3
        default: throw ModelError.unsupportedConfig(key: "general.architecture", value: "\"\(arch)\"", supported: "llama, qwen2, qwen3, gemma3")
        }
        func key(_ k: String) -> String { "\(arch).\(k)" }
        let layers = try m.requiredInt(key("block_count")), D = try m.requiredInt(key("embedding_length"))
        let F = try m.requiredInt(key("feed_forward_length")), H = try m.requiredInt(key("attention.head_count"))
        let Hkv = try m.int(key("attention.head_count_kv")) ?? H
        try requireConfig(H >= 1, key("attention.head_count"), H, "at least 1")
        let hd = try m.int(key("attention.key_length")) ?? D / H
        if let dv = try m.int(key("attention.value_length")), dv != hd {
            throw ModelError.unsupportedConfig(key: key("attention.value_length"), value: "\(dv)", supported: "key_length \(hd)")
        }
        if let r = try m.int(key("rope.dimension_count")), r != hd {
            throw ModelError.unsupportedConfig(key: key("rope.dimension_count"), value: "\(r)", supported: "the head size \(hd): partial rotary embeddings are not")
        }
        let tokens = try m.strings("tokenizer.ggml.tokens")
        let vocab = try m.int(key("vocab_size")) ?? tokens?.count ?? 0
        if let t = tokens, t.count != vocab {
            throw ModelError.invalidConfig(key: key("vocab_size"), value: "\(vocab)", expected: "\(t.count) (the tokens tokenizer.ggml.tokens lists)")
        }
        let theta = try m.double(key("rope.freq_base")) ?? 10000
        var scaling = ModelConfig.RopeScaling.none
        let context = try m.int(key("context_length")) ?? 2048
        switch try m.string(key("rope.scaling.type")) ?? "none" {
        case "none": break
        case "linear": scaling = .linear(factor: try m.double(key("rope.scaling.factor")) ?? 1)
        case "yarn":
            let f = try m.double(key("rope.scaling.factor")) ?? 1
            let original = try m.int(key("rope.scaling.original_context_length")) ?? context
            let attn = try m.double(key("rope.scaling.attn_factor")) ?? (f <= 1 ? 1 : 0.1 * Foundation.log(f) + 1)
            scaling = .yarn(factor: f, originalContext: original, betaFast: 32, betaSlow: 1, attentionFactor: attn, truncate: true)
        case let other: throw ModelError.unsupportedConfig(key: key("rope.scaling.type"), value: "\"\(other)\"", supported: "none, linear, yarn")
        }
        for k in ["attn_logit_softcapping", "final_logit_softcapping"] {
            if let v = try m.double(key(k)), v != 0 { throw ModelError.unsupportedConfig(key: key(k), value: "\(v)", supported: "0") }
        }
        let eps = try m.double(key("attention.layer_norm_rms_epsilon")) ?? 1e-5
        let bos = try m.int("tokenizer.ggml.bos_token_id"), eos = try m.int("tokenizer.ggml.eos_token_id")
        var c = try ModelConfig(architecture: family, vocabSize: vocab, hiddenSize: D, intermediateSize: F, layers: layers, heads: H,
                                kvHeads: Hkv, headDim: hd, rmsNormEps: eps, positions: .rope(theta: theta, scaling: scaling),
                                tieWordEmbeddings: !m.hasTensor("output.weight"), maxPositionEmbeddings: context,
                                bosTokenId: bos.flatMap { (0..<vocab).contains($0) ? $0 : nil },
                                eosTokenId: eos.flatMap { (0..<vocab).contains($0) ? $0 : nil })
        c.qkvBias = family == .qwen2
        c.queryKeyNorm = family == .qwen3 || family == .gemma3
        if family == .gemma3 {
            c.sandwichNorms = true
            c.normWeightOffset = 0     // the converter stored 1 + w
            c.activation = .geluTanh
            c.embeddingScale = Float(Double(D).squareRoot())
            c.attentionScale = 1 / Double(hd).squareRoot()
            if let w = try m.int(key("attention.sliding_window")) {
                c.slidingWindow = w
                c.layerKinds = (0..<layers).map { ($0 + 1) % 6 == 0 ? .full : .sliding }
                c.slidingPositions = .rope(theta: 10000, scaling: .none)
            }
        } else if let w = try m.int(key("attention.sliding_window")), w > 0 {
            c.slidingWindow = w
            c.layerKinds = Array(repeating: .sliding, count: layers)
        }
        c.endTokenIds = c.eosTokenId.map { [$0] } ?? []
        try c.validate()
        return c
    }
}
