import Foundation
import LongAttention

/// A Llama-architecture decoder's hyper-parameters, as Hugging Face's `config.json` states them
/// (`LlamaForCausalLM`, `MixtralForCausalLM`), plus the project's own options under the key
/// `long_attention`, which transformers ignores: the attention variant of each layer and the
/// position encoding (RoPE, or ALiBi, which transformers' Llama does not have).
///
/// Symbols used across the model layer: `V` vocabulary, `D` hidden size, `F` intermediate size,
/// `L` layers, `H` query heads, `Hkv` key/value heads, `hd` head dimension, `E` experts, `k`
/// experts per token, `B` sequences, `T` tokens per sequence.
public struct ModelConfig: Sendable, Equatable {
    /// The family: which small pieces a decoder layer has (``ModelFamily`` lists them).
    public enum Architecture: String, Sendable, CaseIterable {
        case llama, mixtral, mistral, qwen2, qwen3
        /// Gemma 3's text decoder (`gemma3_text`, `Gemma3ForCausalLM`).
        case gemma3 = "gemma3_text"
    }

    /// The MLP's gate activation: SwiGLU (`silu`) or GeGLU with the tanh approximation of GELU
    /// (`gelu_pytorch_tanh`, Gemma).
    public enum Activation: String, Sendable {
        case silu
        case geluTanh = "gelu_pytorch_tanh"
    }

    /// Which keys a layer's queries see: all earlier ones, or the last `slidingWindow` (transformers'
    /// rule: query i sees key j iff i − W < j ≤ i).
    public enum LayerKind: String, Sendable {
        case full = "full_attention"
        case sliding = "sliding_attention"
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
        /// Llama 3.1's `rope_type: "llama3"`.
        case llama3(factor: Double, lowFrequencyFactor: Double, highFrequencyFactor: Double, originalContext: Int)
        /// `rope_type: "yarn"`, with the attention factor resolved (given, or from `mscale`, or 0.1·ln(factor) + 1).
        case yarn(factor: Double, originalContext: Int, betaFast: Double, betaSlow: Double, attentionFactor: Double,
                  truncate: Bool)
        /// `rope_type: "dynamic"`: the base grows with the sequence length past `max_position_embeddings`.
        case dynamic(factor: Double)
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

    // MARK: The pieces in which the families differ (defaults: Llama's)

    /// Biases on the q, k and v projections (Qwen2).
    public var qkvBias = false
    /// RMSNorm of each query and key head before RoPE, weights `[hd]` (Qwen3, Gemma 3).
    public var queryKeyNorm = false
    /// Norms after attention and after the MLP as well as before them (Gemma 3's four norms per layer).
    public var sandwichNorms = false
    /// Added to every RMSNorm weight: 1 for Gemma's `x · (1 + w)` as Hugging Face stores `w`, 0 when
    /// the stored weight already holds `1 + w` (llama.cpp's GGUF) or for the other families.
    public var normWeightOffset: Float = 0
    public var activation = Activation.silu
    /// The embedding rows are multiplied by this (Gemma: √D).
    public var embeddingScale: Float? = nil
    /// Scores are `scale · q·k`; nil: `1/√hd` (Gemma 3: `query_pre_attn_scalar^−1/2`).
    public var attentionScale: Double? = nil
    /// The window of sliding layers (nil: no sliding layers).
    public var slidingWindow: Int? = nil
    /// Full or sliding, per layer (default all full).
    public var layerKinds: [LayerKind] = []
    /// RoPE of sliding layers when it differs from ``positions`` (Gemma 3's `rope_local_base_freq`).
    public var slidingPositions: PositionEncoding? = nil
    /// Ids that end a generation (`eos_token_id` may list several; the first is ``eosTokenId``).
    public var endTokenIds: [Int] = []

    /// StreamingLLM's attention sinks + sliding window (Xiao et al. 2023) on every full layer, an
    /// inference option of the project's own (never saved): query `i` sees keys `j < sinks` and
    /// `i − window < j ≤ i`; decoding keeps only those in the KV cache (memory bounded by
    /// `sinks + window` positions per layer). Positions are StreamingLLM's: by slot in the cache
    /// (see ``CausalLM`` `+Streaming`). Sliding layers keep their own window.
    public var streaming: StreamingWindow? = nil

    /// Whether `layer` is a sliding-window layer.
    public func isSliding(_ layer: Int) -> Bool { layer < layerKinds.count && layerKinds[layer] == .sliding }

    /// A sliding window imposed at run time on layers that were trained with full attention (a
    /// pretrained model fitted with local attention, without training): layer → W. The layer keeps
    /// its own RoPE (it is not a ``LayerKind/sliding`` layer); not saved in config.json.
    public var imposedWindows: [Int: Int] = [:]

    /// The window of `layer`, or nil for full attention: a sliding layer's; on a full layer an
    /// imposed window (``imposedWindows``), else the streaming window (``streaming``).
    public func window(of layer: Int) -> Int? { isSliding(layer) ? slidingWindow : (imposedWindows[layer] ?? streaming?.window) }

    /// The attention sinks of `layer`: ``streaming``'s on full layers, 0 otherwise.
    public func sinks(of layer: Int) -> Int { isSliding(layer) ? 0 : (streaming?.sinks ?? 0) }

    /// The positions of `layer`: ``slidingPositions`` on sliding layers when set, else ``positions``.
    public func positions(of layer: Int) -> PositionEncoding { isSliding(layer) ? (slidingPositions ?? positions) : positions }

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

    /// Throws ``ModelError/invalidConfig(key:value:expected:)`` (or another config case) naming the first
    /// inconsistent key and its value.
    public func validate() throws {
        func bad(_ key: String, _ value: Any, _ expected: String) -> ModelError {
            .invalidConfig(key: key, value: "\(value)", expected: expected)
        }
        for (name, v) in [("vocab_size", vocabSize), ("hidden_size", hiddenSize), ("intermediate_size", intermediateSize),
                          ("num_hidden_layers", layers), ("num_attention_heads", heads), ("num_key_value_heads", kvHeads),
                          ("head_dim", headDim), ("max_position_embeddings", maxPositionEmbeddings)] where v < 1 {
            throw bad(name, v, "at least 1")
        }
        // Caps on each size: with them every single weight matrix has fewer than 2^53 elements
        // (q_proj is H·hd ≤ 2^32 rows of D ≤ 2^20), so shapes cannot overflow; the model as a whole
        // can (L·E experts of 3·D·F each), and ``parameterBytes`` is checked below.
        for (name, v) in [("vocab_size", vocabSize), ("hidden_size", hiddenSize), ("intermediate_size", intermediateSize),
                          ("head_dim", headDim)] where v > 1 << 20 {
            throw ModelError.tooLarge(quantity: name, value: v, limit: 1 << 20)
        }
        guard layers <= 1024 else { throw ModelError.tooLarge(quantity: "num_hidden_layers", value: layers, limit: 1024) }
        guard heads <= 4096 else { throw ModelError.tooLarge(quantity: "num_attention_heads", value: heads, limit: 4096) }
        guard heads % kvHeads == 0 else { throw bad("num_attention_heads", heads, "a multiple of num_key_value_heads (\(kvHeads))") }
        guard rmsNormEps > 0, rmsNormEps.isFinite else { throw bad("rms_norm_eps", rmsNormEps, "positive") }
        for p in [positions] + (slidingPositions.map { [$0] } ?? []) {
            guard case .rope(let theta, let scaling) = p else { continue }
            guard headDim % 2 == 0 else { throw bad("head_dim", headDim, "even (RoPE)") }
            guard theta > 1, theta.isFinite else { throw bad("rope_theta", theta, "> 1") }
            do {
                _ = try RotaryEmbedding.frequencies(dimension: headDim, base: theta, scaling: scaling.rotary(maxPositionEmbeddings),
                                                    maxPositions: 1)
            } catch { throw bad("rope_scaling", scaling, "a scaling RoPE can compute (\(error))") }
        }
        for id in [bosTokenId, eosTokenId].compactMap({ $0 }) where !(0..<vocabSize).contains(id) {
            throw bad(id == bosTokenId ? "bos_token_id" : "eos_token_id", id, "in 0..<\(vocabSize) (vocab_size)")
        }
        if architecture == .mixtral {
            guard experts >= 1, experts <= 1024 else { throw bad("num_local_experts", experts, "in 1...1024") }
            guard (1...experts).contains(expertsPerToken) else {
                throw bad("num_experts_per_tok", expertsPerToken, "in 1...\(experts)")
            }
            if let sizes = expertSizes {
                guard sizes.count == experts, sizes.allSatisfy({ (1...(1 << 20)).contains($0) }) else {
                    throw bad("long_attention.expert_sizes", sizes, "\(experts) sizes in 1...2^20")
                }
            }
        }
        guard attention.count == layers else { throw bad("long_attention.layers", "\(attention.count) variants", "\(layers) (num_hidden_layers)") }
        guard layerKinds.isEmpty || layerKinds.count == layers else { throw bad("layer_types", "\(layerKinds.count) layers", "\(layers) (num_hidden_layers)") }
        for (layer, w) in imposedWindows {
            guard (0..<layers).contains(layer), w >= 1, !isSliding(layer), attention[layer] == .exact else {
                throw ModelError.unsupportedRefit(layer: layer, refit: "an imposed window W = \(w)",
                                                 requirement: "an exact, full-attention layer in 0..<\(layers) and W >= 1")
            }
        }
        if layerKinds.contains(.sliding) {
            guard let w = slidingWindow, w >= 1 else { throw bad("sliding_window", slidingWindow.map { "\($0)" } ?? "null", "at least 1 (layer_types has sliding layers)") }
            for (i, a) in attention.enumerated() where layerKinds[i] == .sliding && a != .exact {
                throw bad("long_attention.layers[\(i)]", a.name, "exact (layer \(i) is a sliding-window layer)")
            }
        }
        if let st = streaming {
            guard st.sinks >= 0, st.window >= 1 else {
                throw st.sinks < 0 ? bad("attention sinks", st.sinks, ">= 0") : bad("attention window", st.window, ">= 1")
            }
            guard case .rope = positions else { throw ModelError.unsupportedModel(operation: "attention sinks + window", requirement: "RoPE positions") }
            for (i, a) in attention.enumerated() where !isSliding(i) && a != .exact {
                throw bad("long_attention.layers[\(i)]", a.name, "exact (attention sinks + window)")
            }
        }
        if let s = attentionScale { guard s > 0, s.isFinite else { throw bad("attention scale", s, "positive") } }
        if let s = embeddingScale { guard s > 0, s.isFinite else { throw bad("embedding scale", s, "positive") } }
        guard normWeightOffset == 0 || normWeightOffset == 1 else { throw bad("norm weight offset", normWeightOffset, "0 or 1") }
        for id in endTokenIds where !(0..<vocabSize).contains(id) { throw bad("eos_token_id", id, "in 0..<\(vocabSize) (vocab_size)") }
        for a in attention { try a.validate(heads: heads, headDim: headDim) }
        if case .alibi = positions {
            for a in attention where !a.supportsALiBi {
                throw ModelError.unsupportedConfig(key: "long_attention.position_encoding", value: "alibi with \(a.name) attention",
                                                   supported: "ALiBi with exact and BigBird attention")
            }
        }
        _ = try parameterBytes()
    }

    /// The float32 bytes of every tensor of ``CausalLM/layout(_:)``, by checked arithmetic:
    /// throws ``ModelError/tooLarge(quantity:value:limit:)`` naming the sizes when the count or the bytes do not
    /// fit in an `Int` (a config can pass every per-key cap and still ask for 2^63 bytes).
    public func parameterBytes() throws -> Int {
        struct Overflow: Error {}
        func mul(_ a: Int, _ b: Int) throws -> Int {
            let (p, o) = a.multipliedReportingOverflow(by: b)
            if o { throw Overflow() }
            return p
        }
        func add(_ a: Int, _ b: Int) throws -> Int {
            let (p, o) = a.addingReportingOverflow(b)
            if o { throw Overflow() }
            return p
        }
        do {
            let (D, hd) = (hiddenSize, headDim)
            let qWidth = try mul(heads, hd), kvWidth = try mul(kvHeads, hd)
            var layer = try add(try mul(2, try mul(qWidth, D)), try mul(2, try mul(kvWidth, D)))   // q, o; k, v
            if qkvBias { layer = try add(layer, try add(qWidth, try mul(2, kvWidth))) }
            if queryKeyNorm { layer = try add(layer, try mul(2, hd)) }
            layer = try add(layer, try mul(sandwichNorms ? 4 : 2, D))
            var total = try mul(vocabSize, D)   // embed_tokens
            if !tieWordEmbeddings { total = try add(total, try mul(vocabSize, D)) }
            total = try add(total, D)   // model.norm
            for i in 0..<layers {
                var l = layer
                if i < attention.count, attention[i].hasBeta { l = try add(l, heads) }
                if architecture == .mixtral {
                    l = try add(l, try mul(experts, D))   // router
                    for e in 0..<experts { l = try add(l, try mul(3, try mul(expertSize(e), D))) }
                } else {
                    l = try add(l, try mul(3, try mul(intermediateSize, D)))
                }
                total = try add(total, l)
            }
            return try mul(total, MemoryLayout<Float>.size)
        } catch {
            throw ModelError.tooLarge(quantity: "the parameter bytes of \(layers) layers × hidden_size \(hiddenSize)"
                + (architecture == .mixtral ? " × \(experts) experts of intermediate_size \(intermediateSize)" : ""),
                value: nil, limit: Int.max)
        }
    }

    /// Intermediate size of expert e (Mixtral) or of the dense MLP.
    public func expertSize(_ e: Int) -> Int { expertSizes?[e] ?? intermediateSize }
}

/// StreamingLLM's cache shape: the first `sinks` positions and the last `window` (the query's own included).
public struct StreamingWindow: Sendable, Equatable, Codable {
    public var sinks: Int
    public var window: Int
    public init(sinks: Int, window: Int) { (self.sinks, self.window) = (sinks, window) }
}

/// Errors of the model layer. Every case names what is wrong with structured values (a config key, an
/// option, a token id and its position, a step); `description` renders the message the command line prints.
public enum ModelError: Error, Equatable, CustomStringConvertible, Sendable {
    /// Config key `key` (a config.json key such as `num_hidden_layers`, a dotted `long_attention.*` key,
    /// or a GGUF metadata key) holds `value`; `expected` says what it must be (`an integer`, `at least 1`).
    case invalidConfig(key: String, value: String, expected: String)
    /// Config key `key`, which has no default, is absent.
    case missingConfig(key: String)
    /// Config key `key` holds `value`, which this implementation does not compute; `supported` lists what
    /// it does (empty when there is nothing to list).
    case unsupportedConfig(key: String, value: String, supported: String)
    /// The config file (or its top-level object) at `file` cannot be read as JSON.
    case unreadableConfig(file: String)
    /// `quantity` (a parameter count, a byte size, a sequence of positions) is `value`, or overflows `Int`
    /// when `value` is nil, beyond `limit`.
    case tooLarge(quantity: String, value: Int?, limit: Int)
    /// A refit of layer `layer` (nil: the model as a whole) to `refit` (BigBird, a sliding window, …)
    /// the kernels do not compute; `requirement` says what it needs.
    case unsupportedRefit(layer: Int?, refit: String, requirement: String)
    /// A checkpoint, adapter, optimiser or trainer state that cannot be used as a whole: `file` names the
    /// file or folder (empty when the parameters are in memory). `reason` is free-form because the
    /// problems are varied (a malformed index, a shard outside the folder, an interrupted save);
    /// problems of one tensor are the typed tensor cases below.
    case invalidCheckpoint(file: String, reason: String)
    /// Tensor `name` (as `file` names it; `file` nil for parameters built in memory) holds a NaN or an
    /// infinity, at row-major element `index` when known.
    case nonFiniteTensor(name: String, file: String?, index: Int?)
    /// Tensor `name`, which the config needs (with `shape`), is not in `file`.
    case missingTensor(name: String, shape: [Int], file: String)
    /// Tensor `name` has `shape`; the config needs `expected`.
    case misshapenTensor(name: String, shape: [Int], expected: [Int], file: String?)
    /// Tensor `name` is no part of the model (or adapter) the config describes.
    case unexpectedTensor(name: String, file: String?)
    /// Tensor `name` is stored as `type` (a GGML type), which this implementation does not read.
    case unsupportedTensorType(name: String, type: String)
    /// Token id `token`, at `position` of sequence `sequence` of a batch, is outside the vocabulary
    /// `0..<vocabulary` (for a trainer's streams, sequence 0 is the training and 1 the validation stream).
    case tokenOutOfRange(token: Int, sequence: Int, position: Int, vocabulary: Int)
    /// Target `target` at row-major `position` of the batch is neither -1 (ignored) nor in `0..<vocabulary`.
    case targetOutOfRange(target: Int, position: Int, vocabulary: Int)
    /// A sequence of `length` positions, beyond the `limit` this implementation supports.
    case sequenceTooLong(length: Int, limit: Int)
    /// `input` (the prompt, the text, the training stream) has `count` tokens; it needs at least `minimum`.
    case tooFewTokens(input: String, count: Int, minimum: Int)
    /// `count` ids (or targets) do not make a `[batch, length]` batch with both at least 1.
    case batchMismatch(count: Int, batch: Int, length: Int)
    /// The token file `file` has `shape`; token files are `[B, T]` or `[T]` with B, T >= 1.
    case invalidTokenFile(file: String, shape: [Int])
    /// Training, generation or evaluation option `name` is `value`; `expected` says what it must be.
    case invalidOption(name: String, value: String, expected: String)
    /// `operation` (a distributed run, stepwise logits, quantisation, …) needs `requirement` of the model,
    /// which this one lacks.
    case unsupportedModel(operation: String, requirement: String)
    /// `what` (LoRA adapter, optimizer state, a KV cache, a parameter set) has `found`; the model's
    /// layout needs `expected`.
    case layoutMismatch(what: String, found: String, expected: String)
    /// Resuming the training in `directory` with `option` = `value`; the checkpoint was trained with `saved`.
    case resumeMismatch(directory: String, option: String, value: String, saved: String)
    /// The model `model` has no chat template (a base model), which chat formatting needs.
    case noChatTemplate(model: String)
    /// `path` names no file or folder.
    case fileNotFound(path: String)
    /// Non-empty line `line` (1-based) of a corpus, beginning with `text`, lacks a well-formed `book chapter:verse` reference.
    case malformedCorpusLine(line: Int, text: String)
    /// The corpus at `path` (nil: given in memory) holds no document or cannot be read.
    case emptyCorpus(path: String?)
    /// A streaming generator's `next()` was called before `prefill()`.
    case notPrefilled
    /// Generation step `step` (0-based count of tokens produced) gave a NaN or infinite logit for token `token`.
    case nonFiniteLogits(step: Int, token: Int)
    /// The logits of `position` in sequence (or chunk) `sequence` hold a NaN or an infinity.
    case nonFiniteLogitsAt(sequence: Int, position: Int)
    /// The training loss became NaN or infinite (at optimiser step `step` when known).
    case nonFiniteLoss(step: Int?)
    /// A gradient (its norm at step `step`, when known) became NaN or infinite.
    case nonFiniteGradient(step: Int?)

    public var description: String {
        switch self {
        case .invalidConfig(let key, let value, let expected): return "config: \(key) must be \(expected), got \(value)"
        case .missingConfig(let key): return "config: \(key) is missing"
        case .unsupportedConfig(let key, let value, let supported):
            return "config: \(key) = \(value) is not supported" + (supported.isEmpty ? "" : " (\(supported))")
        case .unreadableConfig(let file): return "config: cannot read \(file) as a JSON object"
        case .tooLarge(let quantity, let value?, let limit): return "too large: \(quantity) is \(value), beyond \(limit)"
        case .tooLarge(let quantity, nil, let limit): return "too large: \(quantity) overflows (beyond \(limit))"
        case .unsupportedRefit(let layer, let refit, let requirement):
            return "config: \(layer.map { "layer \($0): " } ?? "")\(refit) needs \(requirement)"
        case .invalidCheckpoint(let file, let reason): return "checkpoint: \(file.isEmpty ? "" : file + ": ")\(reason)"
        case .nonFiniteTensor(let name, let file, let index):
            return "checkpoint: \(file.map { $0 + ": " } ?? "")\(name) holds NaN or Inf" + (index.map { " (element \($0))" } ?? "")
        case .missingTensor(let name, let shape, let file): return "checkpoint: \(file): tensor \(name) \(shape) is missing"
        case .misshapenTensor(let name, let shape, let expected, let file):
            return "checkpoint: \(file.map { $0 + ": " } ?? "")\(name) has shape \(shape), the config needs \(expected)"
        case .unexpectedTensor(let name, let file):
            return "checkpoint: \(file.map { $0 + ": " } ?? "")tensor \(name) is not part of this model"
        case .unsupportedTensorType(let name, let type): return "checkpoint: \(name): tensor type \(type) is not supported"
        case .tokenOutOfRange(let token, let sequence, let position, let vocabulary):
            return "tokens: id \(token) at [\(sequence), \(position)] is outside the vocabulary 0..<\(vocabulary)"
        case .targetOutOfRange(let target, let position, let vocabulary):
            return "tokens: target \(target) at \(position) is outside the vocabulary 0..<\(vocabulary) (or -1, ignored)"
        case .sequenceTooLong(let length, let limit):
            return "tokens: sequences of \(length) tokens are beyond what this implementation supports (\(limit) positions)"
        case .tooFewTokens(let input, let count, let minimum): return "tokens: \(input) has \(count) tokens, fewer than \(minimum)"
        case .batchMismatch(let count, let batch, let length):
            return "tokens: \(count) ids do not make a [B, T] = [\(batch), \(length)] batch with B, T >= 1"
        case .invalidTokenFile(let file, let shape): return "tokens: \(file): tokens must be [B, T] (or [T]), got shape \(shape)"
        case .invalidOption(let name, let value, let expected): return "invalid argument: \(name) must be \(expected), got \(value)"
        case .unsupportedModel(let operation, let requirement): return "invalid argument: \(operation) needs \(requirement)"
        case .layoutMismatch(let what, let found, let expected):
            return "invalid argument: \(what) has \(found), the model's layout needs \(expected)"
        case .resumeMismatch(let directory, let option, let value, let saved):
            return "invalid argument: resuming \(directory): \(option) is \(value), the checkpoint was trained with \(saved)"
        case .noChatTemplate(let model): return "invalid argument: \(model) has no chat template (a base model): --chat needs one"
        case .fileNotFound(let path): return "invalid argument: \(path): no such file or folder"
        case .malformedCorpusLine(let line, let text): return "invalid argument: corpus line \(line) lacks a well-formed reference: \(text)"
        case .emptyCorpus(let path?): return "invalid argument: cannot read the corpus \(path), or it is empty (run `make corpus`)"
        case .emptyCorpus(nil): return "invalid argument: the corpus is empty"
        case .notPrefilled: return "invalid argument: next() before prefill()"
        case .nonFiniteLogits(let step, let token): return "non-finite value: logit \(token) at generation step \(step)"
        case .nonFiniteLogitsAt(let sequence, let position): return "non-finite value: logits of sequence \(sequence), position \(position)"
        case .nonFiniteLoss(let step): return "non-finite value: the loss" + (step.map { " at step \($0)" } ?? "")
        case .nonFiniteGradient(let step): return "non-finite value: the gradient norm" + (step.map { " at step \($0)" } ?? "")
        }
    }
}

/// Throws ``ModelError/invalidOption(name:value:expected:)`` unless `condition` holds.
@inline(__always)
func requireOption(_ condition: Bool, _ name: String, _ value: @autoclosure () -> Any, _ expected: String) throws {
    if !condition { throw ModelError.invalidOption(name: name, value: "\(value())", expected: expected) }
}

/// Throws ``ModelError/invalidConfig(key:value:expected:)`` unless `condition` holds.
@inline(__always)
func requireConfig(_ condition: Bool, _ key: String, _ value: @autoclosure () -> Any, _ expected: String) throws {
    if !condition { throw ModelError.invalidConfig(key: key, value: "\(value())", expected: expected) }
}

/// The row-major position of multi-index `index` in a tensor of `shape` (what the typed errors report).
func rowMajor(_ index: [Int], _ shape: [Int]) -> Int {
    zip(index, shape).reduce(0) { $0 * $1.1 + $1.0 }
}

extension ModelConfig.RopeScaling {
    /// The attention layer's form; dynamic NTK needs the original context (`max_position_embeddings`).
    func rotary(_ maxPositionEmbeddings: Int) -> RotaryEmbedding.Scaling {
        switch self {
        case .none: return .none
        case .linear(let f): return .linear(factor: f)
        case .ntk(let f): return .ntk(factor: f)
        case .llama3(let f, let lo, let hi, let c): return .llama3(factor: f, lowFrequencyFactor: lo, highFrequencyFactor: hi, originalContext: c)
        case .yarn(let f, let c, let fast, let slow, let a, let t):
            return .yarn(factor: f, originalContext: c, betaFast: fast, betaSlow: slow, attentionFactor: a, truncate: t)
        case .dynamic(let f): return .dynamicNTK(factor: f, originalContext: maxPositionEmbeddings)
        }
    }

    /// Whether the table depends on the sequence length (dynamic NTK).
    var dependsOnLength: Bool { if case .dynamic = self { return true } else { return false } }
}
