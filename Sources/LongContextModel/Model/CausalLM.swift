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
public final class CausalLM: @unchecked Sendable {
    public let config: ModelConfig
    /// The weights, under transformers' names.
    public let parameters: ParameterSet
    let rope: RopeCache?

    /// A model with `parameters` (laid out as ``CausalLM/layout(_:)`` says).
    public init(config: ModelConfig, parameters: ParameterSet) throws {
        try config.validate()
        let expected = Self.layout(config)
        guard parameters.entries.map(\.name) == expected.map(\.name),
              parameters.entries.map(\.shape) == expected.map(\.shape) else {
            throw ModelError.invalidCheckpoint("parameters do not match the config's layout")
        }
        self.config = config
        self.parameters = parameters
        if case .rope(let theta, let scaling) = config.positions {
            rope = RopeCache(headDim: config.headDim, theta: theta, scaling: scaling)
        } else {
            rope = nil
        }
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
            if e.name.hasSuffix("layernorm.weight") || e.name == "model.norm.weight" {
                ptr.update(repeating: 1, count: e.count)
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
            l.append((p + "self_attn.k_proj.weight", [c.kvHeads * hd, D]))
            l.append((p + "self_attn.v_proj.weight", [c.kvHeads * hd, D]))
            l.append((p + "self_attn.o_proj.weight", [D, c.heads * hd]))
            if c.attention[i].hasBeta { l.append((p + "self_attn.infini_beta", [c.heads])) }
            l.append((p + "post_attention_layernorm.weight", [D]))
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
            throw ModelError.invalidTokens("\(tokens.count) ids do not make a [B, T] = [\(B), \(T)] batch with B, T >= 1")
        }
        if let bad = tokens.firstIndex(where: { $0 < 0 || Int($0) >= config.vocabSize }) {
            throw ModelError.invalidTokens("id \(tokens[bad]) at [\(bad / T), \(bad % T)] is outside the vocabulary 0..<\(config.vocabSize)")
        }
        guard T <= 1 << 22 else { throw ModelError.invalidTokens("sequences of \(T) tokens are beyond what this implementation supports") }
    }
}

/// RoPE tables for the longest sequence seen so far (grown on demand, shared by threads).
final class RopeCache: @unchecked Sendable {
    let headDim: Int, theta: Double, scaling: ModelConfig.RopeScaling
    private var table: RotaryEmbedding?
    private let lock = NSLock()

    init(headDim: Int, theta: Double, scaling: ModelConfig.RopeScaling) {
        (self.headDim, self.theta, self.scaling) = (headDim, theta, scaling)
    }

    /// A table covering positions `0 ..< positions`.
    func embedding(positions: Int) throws -> RotaryEmbedding {
        lock.lock()
        defer { lock.unlock() }
        if let table, table.maxPositions >= positions { return table }
        let s: RotaryEmbedding.Scaling
        switch scaling {
        case .none: s = .none
        case .linear(let f): s = .linear(factor: f)
        case .ntk(let f): s = .ntk(factor: f)
        }
        // Grow in powers of two so a token-by-token generation rebuilds the table O(log T) times.
        var n = 256
        while n < positions { n *= 2 }
        let t = try RotaryEmbedding(dimension: headDim, maxPositions: n, base: theta, scaling: s)
        table = t
        return t
    }
}

extension SplitMix64 {
    /// A standard normal draw (Box–Muller).
    mutating func nextNormal() -> Double {
        let u1 = nextUnitOpen(), u2 = nextUnitOpen()
        return (-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * Double.pi * u2)
    }
}
