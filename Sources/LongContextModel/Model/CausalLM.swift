import AttentionTensor
import Foundation
import LongAttention

/// A Llama-architecture decoder (Llama, or Mixtral with mixture-of-experts MLPs) whose weights are
/// Hugging Face's own: token embedding; per layer RMSNorm → causal attention (RoPE or ALiBi, GQA,
/// the layer's ``LayerAttention`` variant) → residual, RMSNorm → SwiGLU MLP or MoE → residual;
/// final RMSNorm; LM head (tied to the embedding or not).
///
/// Forward, backward and the loss are in `CausalLM+Forward.swift` and `CausalLM+Backward.swift`,
/// written loop by loop over `[B·T, ·]` activations (token-major rows), each projection one GEMM.
///
/// `@unchecked Sendable`, for sharing read-only (the server's scheduler and handlers, the worker
/// threads of a forward): every stored property is fixed at `init` except ``lora``, which is set
/// only on a fresh model before it is returned (``attaching(_:)``, ``withMatmul(_:)``); the RoPE
/// tables grow under a lock. The weights' values change only in training (``Trainer``, Temp-LoRA),
/// which owns the model on one thread: do not train a model that another thread is running.
public final class CausalLM: @unchecked Sendable {
    public let config: ModelConfig
    /// The weights that live in float32 memory, under transformers' names: all of them for a
    /// Hugging Face checkpoint; for a GGUF file, the small ones (norms, biases) only.
    public let parameters: ParameterSet
    /// Weight matrices read in place from a file (a GGUF's tensors, quantised or F32), by
    /// transformers' name; they take no gradient.
    public let frozen: [String: WeightMatrix]
    /// Keeps the memory behind ``frozen`` alive (the mapped file).
    let storage: (any Sendable)?
    /// How products with quantised ``frozen`` matrices are computed (``MatmulMode``): `.exact`
    /// dequantises panels into float32; `.fast` runs decoding steps (≤ 16 rows) on the integer
    /// kernels. Chosen at load; ``withMatmul(_:)`` gives the same weights under the other mode.
    public let matmul: MatmulMode
    /// RoPE tables of full layers, and of sliding layers when their positions differ (Gemma 3).
    let rope: RopeCache?, slidingRope: RopeCache?
    /// A LoRA adapter applied unmerged to the projections (``attaching(_:)``), or nil.
    public internal(set) var lora: AttachedLoRA?

    /// A model with `parameters` (laid out as ``CausalLM/layout(_:)`` says, less the names in
    /// `frozen`) and `frozen` weight matrices (kept alive by `storage`).
    public init(config: ModelConfig, parameters: ParameterSet, frozen: [String: WeightMatrix] = [:],
                storage: (any Sendable)? = nil, matmul: MatmulMode = .exact) throws {
        try config.validate()
        let expected = Self.layout(config)
        let trainable = expected.filter { frozen[$0.name] == nil }
        let found = parameters.entries.map { "\($0.name) \($0.shape)" }, wanted = trainable.map { "\($0.name) \($0.shape)" }
        if found != wanted {
            let i = (0..<min(found.count, wanted.count)).first { found[$0] != wanted[$0] } ?? min(found.count, wanted.count)
            throw ModelError.layoutMismatch(what: "the parameters (entry \(i))", found: i < found.count ? found[i] : "no entry",
                                            expected: i < wanted.count ? wanted[i] : "no entry")
        }
        let shapes = Dictionary(uniqueKeysWithValues: expected.map { ($0.name, $0.shape) })
        for (name, w) in frozen {
            guard let shape = shapes[name] else { throw ModelError.unexpectedTensor(name: name, file: nil) }
            if case .blocks(let b) = w, [b.rows, b.columns] != shape {
                throw ModelError.misshapenTensor(name: name, shape: [b.rows, b.columns], expected: shape, file: nil)
            }
        }
        self.config = config
        self.parameters = parameters
        self.frozen = frozen
        self.storage = storage
        self.matmul = matmul
        func cache(_ p: ModelConfig.PositionEncoding) -> RopeCache? {
            guard case .rope(let theta, let scaling) = p else { return nil }
            return RopeCache(headDim: config.headDim, theta: theta, scaling: scaling, maxPositionEmbeddings: config.maxPositionEmbeddings)
        }
        rope = cache(config.positions)
        slidingRope = config.slidingPositions.flatMap(cache)
        try checkExpertWeights()
    }

    /// The same weights (shared, not copied) multiplied under `mode`.
    public func withMatmul(_ mode: MatmulMode) throws -> CausalLM {
        if mode == matmul { return self }
        let m = try CausalLM(config: config, parameters: parameters, frozen: frozen, storage: storage, matmul: mode)
        m.lora = lora
        return m
    }

    /// The weight matrix `name`: frozen (read in place) or a parameter.
    func matrix(_ name: String) -> WeightMatrix {
        if let w = frozen[name] { return w }
        return .dense(parameters.pointer(name))
    }

    /// A freshly initialised model: embeddings and projections normal(0, 0.02), the projections
    /// that write into the residual stream (o_proj, down_proj, experts' w2) scaled by 1/sqrt(2L)
    /// (GPT-2's rule, so the stream's variance does not grow with depth), norms 1, Infini's gate
    /// logits β = 0 (an even blend), all from `seed`.
    public convenience init(config: ModelConfig, seed: UInt64) throws {
        let p = try ParameterSet(layout: Self.layout(config))
        var rng = SplitMix64(seed: seed)
        let residualScale = 1 / (2 * Double(config.layers)).squareRoot()
        for e in p.entries {
            let ptr = p.scalars + e.offset
            if e.name.hasSuffix("layernorm.weight") || e.name.hasSuffix("_norm.weight") || e.name == "model.norm.weight" {
                // Gemma's norms compute x·(1 + w): w = 0 is the identity there.
                ptr.update(repeating: 1 - config.normWeightOffset, count: e.count)
            } else if e.name.hasSuffix(".bias") {
                ptr.update(repeating: 0, count: e.count)
            } else if e.name.hasSuffix("infini_beta") {
                ptr.update(repeating: 0, count: e.count)
            } else {
                let std = 0.02 * (e.name.hasSuffix("o_proj.weight") || e.name.hasSuffix("down_proj.weight")
                                  || e.name.hasSuffix(".w2.weight") ? residualScale : 1)
                for i in 0..<e.count { ptr[i] = Float(std * rng.nextNormal()) }
            }
        }
        try self.init(config: config, parameters: p)
    }

    /// Names and shapes of every parameter, in the order transformers' modules list them.
    public static func layout(_ c: ModelConfig) -> [(name: String, shape: [Int])] {
        let (D, hd) = (c.hiddenSize, c.headDim)
        var l: [(String, [Int])] = [("model.embed_tokens.weight", [c.vocabSize, D])]
        for i in 0..<c.layers {
            let p = "model.layers.\(i)."
            l.append((p + "input_layernorm.weight", [D]))
            l.append((p + "self_attn.q_proj.weight", [c.heads * hd, D]))
            if c.qkvBias { l.append((p + "self_attn.q_proj.bias", [c.heads * hd])) }
            l.append((p + "self_attn.k_proj.weight", [c.kvHeads * hd, D]))
            if c.qkvBias { l.append((p + "self_attn.k_proj.bias", [c.kvHeads * hd])) }
            l.append((p + "self_attn.v_proj.weight", [c.kvHeads * hd, D]))
            if c.qkvBias { l.append((p + "self_attn.v_proj.bias", [c.kvHeads * hd])) }
            l.append((p + "self_attn.o_proj.weight", [D, c.heads * hd]))
            if c.queryKeyNorm {
                l.append((p + "self_attn.q_norm.weight", [hd]))
                l.append((p + "self_attn.k_norm.weight", [hd]))
            }
            if c.attention[i].hasBeta { l.append((p + "self_attn.infini_beta", [c.heads])) }
            l.append((p + "post_attention_layernorm.weight", [D]))
            if c.sandwichNorms {
                l.append((p + "pre_feedforward_layernorm.weight", [D]))
                l.append((p + "post_feedforward_layernorm.weight", [D]))
            }
            if c.architecture == .mixtral {
                l.append((p + "block_sparse_moe.gate.weight", [c.experts, D]))
                for e in 0..<c.experts {
                    let F = c.expertSize(e), q = p + "block_sparse_moe.experts.\(e)."
                    l.append((q + "w1.weight", [F, D]))
                    l.append((q + "w2.weight", [D, F]))
                    l.append((q + "w3.weight", [F, D]))
                }
            } else {
                l.append((p + "mlp.gate_proj.weight", [c.intermediateSize, D]))
                l.append((p + "mlp.up_proj.weight", [c.intermediateSize, D]))
                l.append((p + "mlp.down_proj.weight", [D, c.intermediateSize]))
            }
        }
        l.append(("model.norm.weight", [D]))
        if !c.tieWordEmbeddings { l.append(("lm_head.weight", [c.vocabSize, D])) }
        return l
    }

    /// The LM head's weight: `lm_head.weight`, or the embedding when tied.
    var headName: String { config.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight" }

    /// Checks `tokens` (B·T ids, row-major `[B, T]`) against the vocabulary and the positions.
    func checkTokens(_ tokens: [Int32], batch B: Int, length T: Int) throws {
        guard B >= 1, T >= 1, tokens.count == B * T else {
            throw ModelError.batchMismatch(count: tokens.count, batch: B, length: T)
        }
        if let bad = tokens.firstIndex(where: { $0 < 0 || Int($0) >= config.vocabSize }) {
            throw ModelError.tokenOutOfRange(token: Int(tokens[bad]), sequence: bad / T, position: bad % T, vocabulary: config.vocabSize)
        }
        guard T <= 1 << 22 else { throw ModelError.sequenceTooLong(length: T, limit: 1 << 22) }
    }
}

/// RoPE tables for the longest sequence seen so far (grown on demand, shared by threads). Dynamic
/// NTK's table depends on the sequence length itself, so it is built for exactly that length.
/// `@unchecked Sendable`: `table` is read and replaced only under `lock`.
final class RopeCache: @unchecked Sendable {
    let headDim: Int, theta: Double, scaling: ModelConfig.RopeScaling, maxPositionEmbeddings: Int
    private var table: RotaryEmbedding?
    private let lock = NSLock()

    init(headDim: Int, theta: Double, scaling: ModelConfig.RopeScaling, maxPositionEmbeddings: Int) {
        (self.headDim, self.theta, self.scaling, self.maxPositionEmbeddings) = (headDim, theta, scaling, maxPositionEmbeddings)
    }

    /// A table covering positions `0 ..< positions`.
    func embedding(positions: Int) throws -> RotaryEmbedding {
        lock.lock()
        defer { lock.unlock() }
        let s = scaling.rotary(maxPositionEmbeddings)
        if scaling.dependsOnLength {
            if let table, table.maxPositions == positions { return table }
            let t = try RotaryEmbedding(dimension: headDim, maxPositions: positions, base: theta, scaling: s)
            table = t
            return t
        }
        if let table, table.maxPositions >= positions { return table }
        // Grow in powers of two so a token-by-token generation rebuilds the table O(log T) times.
        var n = 256
        while n < positions { n *= 2 }
        let t = try RotaryEmbedding(dimension: headDim, maxPositions: n, base: theta, scaling: s)
        table = t
        return t
    }
}
