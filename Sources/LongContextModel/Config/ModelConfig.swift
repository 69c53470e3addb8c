import Foundation

/// A Llama-architecture decoder's hyper-parameters, as Hugging Face's `config.json` states them
/// (`LlamaForCausalLM`, `MixtralForCausalLM`), plus the project's own options under the key
/// `long_attention`, which transformers ignores: the attention variant of each layer and the
/// position encoding (RoPE, or ALiBi, which transformers' Llama does not have).
///
/// Symbols used across the model layer: `V` vocabulary, `D` hidden size, `F` intermediate size,
/// `L` layers, `H` query heads, `Hkv` key/value heads, `hd` head dimension, `E` experts, `k`
/// experts per token, `B` sequences, `T` tokens per sequence.
public struct ModelConfig: Sendable, Equatable {
    public enum Architecture: String, Sendable {
        case llama, mixtral
    }

    /// How positions enter attention.
    public enum PositionEncoding: Sendable, Equatable {
        /// RoPE with base θ and a context-extension scaling (Hugging Face's `rope_type` default or
        /// linear; NTK-aware base scaling is the project's own key).
        case rope(theta: Double, scaling: RopeScaling)
        /// ALiBi slopes per head, no rotation (the project's own: `"position_encoding": "alibi"`).
        case alibi
    }

    public enum RopeScaling: Sendable, Equatable {
        case none
        /// Position interpolation: positions divided by `factor` (`rope_type: "linear"`).
        case linear(factor: Double)
        /// NTK-aware base scaling: θ · factor^(hd/(hd−2)) (the project's own `rope_type: "ntk"`).
        case ntk(factor: Double)
    }

    public var architecture: Architecture
    public var vocabSize: Int
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var layers: Int
    public var heads: Int
    public var kvHeads: Int
    public var headDim: Int
    public var rmsNormEps: Double
    public var positions: PositionEncoding
    public var tieWordEmbeddings: Bool
    public var maxPositionEmbeddings: Int
    public var bosTokenId: Int?
    public var eosTokenId: Int?
    /// Mixtral: experts per layer, experts per token, the load-balancing loss coefficient.
    public var experts: Int
    public var expertsPerToken: Int
    public var routerAuxLossCoef: Double
    /// The project's own: experts of different intermediate sizes (`F_e`); nil means all
    /// `intermediateSize`. Transformers cannot load such a checkpoint (its experts share one size).
    public var expertSizes: [Int]?
    /// The attention variant of each layer (the project's own key; default exact everywhere).
    public var attention: [LayerAttention]

    public init(architecture: Architecture = .llama, vocabSize: Int, hiddenSize: Int, intermediateSize: Int, layers: Int,
                heads: Int, kvHeads: Int, headDim: Int? = nil, rmsNormEps: Double = 1e-5,
                positions: PositionEncoding = .rope(theta: 10000, scaling: .none), tieWordEmbeddings: Bool = false,
                maxPositionEmbeddings: Int = 2048, bosTokenId: Int? = nil, eosTokenId: Int? = nil,
                experts: Int = 0, expertsPerToken: Int = 0, routerAuxLossCoef: Double = 0.02, expertSizes: [Int]? = nil,
                attention: [LayerAttention]? = nil) throws {
        self.architecture = architecture
        self.vocabSize = vocabSize
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.layers = layers
        self.heads = heads
        self.kvHeads = kvHeads
        self.headDim = headDim ?? (heads > 0 ? hiddenSize / heads : 0)
        self.rmsNormEps = rmsNormEps
        self.positions = positions
        self.tieWordEmbeddings = tieWordEmbeddings
        self.maxPositionEmbeddings = maxPositionEmbeddings
        self.bosTokenId = bosTokenId
        self.eosTokenId = eosTokenId
        self.experts = experts
        self.expertsPerToken = expertsPerToken
        self.routerAuxLossCoef = routerAuxLossCoef
        self.expertSizes = expertSizes
        self.attention = attention ?? Array(repeating: .exact, count: max(0, layers))
        try validate()
    }

    /// Throws ``ModelError/invalidConfig(_:)`` naming the first inconsistent value.
    public func validate() throws {
        func bad(_ s: String) -> ModelError { .invalidConfig(s) }
        for (name, v) in [("vocab_size", vocabSize), ("hidden_size", hiddenSize), ("intermediate_size", intermediateSize),
                          ("num_hidden_layers", layers), ("num_attention_heads", heads), ("num_key_value_heads", kvHeads),
                          ("head_dim", headDim), ("max_position_embeddings", maxPositionEmbeddings)] where v < 1 {
            throw bad("\(name) must be at least 1, got \(v)")
        }
        // Sizes a CPU model of this project can hold: every weight matrix below 2^31 elements.
        for (name, v) in [("vocab_size", vocabSize), ("hidden_size", hiddenSize), ("intermediate_size", intermediateSize),
                          ("head_dim", headDim)] where v > 1 << 20 {
            throw bad("\(name) = \(v) is beyond what this implementation supports (2^20)")
        }
        guard layers <= 1024, heads <= 4096 else { throw bad("\(layers) layers × \(heads) heads is beyond what this implementation supports") }
        guard heads % kvHeads == 0 else { throw bad("num_attention_heads \(heads) is not a multiple of num_key_value_heads \(kvHeads)") }
        guard rmsNormEps > 0, rmsNormEps.isFinite else { throw bad("rms_norm_eps must be positive, got \(rmsNormEps)") }
        if case .rope(let theta, let scaling) = positions {
            guard headDim % 2 == 0 else { throw bad("RoPE needs an even head_dim, got \(headDim)") }
            guard theta > 1, theta.isFinite else { throw bad("rope_theta must be > 1, got \(theta)") }
            switch scaling {
            case .linear(let f), .ntk(let f):
                guard f >= 1, f.isFinite else { throw bad("rope scaling factor must be >= 1, got \(f)") }
            case .none: break
            }
        }
        for id in [bosTokenId, eosTokenId].compactMap({ $0 }) where !(0..<vocabSize).contains(id) {
            throw bad("token id \(id) outside the vocabulary of \(vocabSize)")
        }
        if architecture == .mixtral {
            guard experts >= 1, experts <= 1024 else { throw bad("num_local_experts must be 1...1024, got \(experts)") }
            guard (1...experts).contains(expertsPerToken) else {
                throw bad("num_experts_per_tok must be 1...\(experts), got \(expertsPerToken)")
            }
            if let sizes = expertSizes {
                guard sizes.count == experts, sizes.allSatisfy({ (1...(1 << 20)).contains($0) }) else {
                    throw bad("expert_sizes must list \(experts) sizes in 1...2^20, got \(sizes)")
                }
            }
        }
        guard attention.count == layers else { throw bad("\(attention.count) attention variants for \(layers) layers") }
        for a in attention { try a.validate(heads: heads, headDim: headDim) }
        if case .alibi = positions {
            for a in attention where !a.supportsALiBi {
                throw bad("ALiBi positions with \(a.name) attention: only exact and BigBird attention take an ALiBi bias")
            }
        }
    }

    /// Intermediate size of expert e (Mixtral) or of the dense MLP.
    public func expertSize(_ e: Int) -> Int { expertSizes?[e] ?? intermediateSize }
}

/// Errors of the model layer.
public enum ModelError: Error, Equatable, CustomStringConvertible, Sendable {
    /// config.json is malformed, inconsistent, or asks for something this implementation lacks.
    case invalidConfig(String)
    /// A checkpoint or adapter lacks a tensor, has one of the wrong shape, or has one too many.
    case invalidCheckpoint(String)
    /// A token id outside the vocabulary, a sequence longer than the positions, an empty batch.
    case invalidTokens(String)
    /// Training or generation options out of range.
    case invalidArgument(String)
    /// A loss or gradient became NaN or infinite.
    case nonFinite(String)

    public var description: String {
        switch self {
        case .invalidConfig(let s): return "config: \(s)"
        case .invalidCheckpoint(let s): return "checkpoint: \(s)"
        case .invalidTokens(let s): return "tokens: \(s)"
        case .invalidArgument(let s): return "invalid argument: \(s)"
        case .nonFinite(let s): return "non-finite value: \(s)"
        }
    }
}
