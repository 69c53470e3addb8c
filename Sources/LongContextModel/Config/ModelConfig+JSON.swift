import Foundation

/// config.json in Hugging Face's format (transformers 4.x top-level `rope_theta`/`rope_scaling`
/// and 5.x `rope_parameters` are both read; `rope_parameters` is written).
extension ModelConfig {
    /// Reads config.json. Keys that change the computation and that this implementation does not
    /// have (biases, other activations, other RoPE types, sliding windows, dropout, router jitter)
    /// are refused by name; bookkeeping keys (architectures, dtype, initializer_range, …) are ignored.
    public init(jsonData data: Data) throws {
        guard let any = try? JSONSerialization.jsonObject(with: data), let o = any as? [String: Any] else {
            throw ModelError.unreadableConfig(file: "config.json")
        }
        func int(_ k: String, default d: Int? = nil) throws -> Int {
            guard let v = o[k], !(v is NSNull) else {
                if let d { return d }
                throw ModelError.missingConfig(key: k)
            }
            guard let n = v as? NSNumber, !isJSONBool(v), n.doubleValue == n.doubleValue.rounded(), abs(n.doubleValue) < 1e15 else {
                throw ModelError.invalidConfig(key: k, value: "\(v)", expected: "an integer")
            }
            return n.intValue
        }
        func double(_ k: String, in obj: [String: Any], default d: Double? = nil) throws -> Double {
            guard let v = obj[k], !(v is NSNull) else {
                if let d { return d }
                throw ModelError.missingConfig(key: k)
            }
            guard let n = v as? NSNumber, !isJSONBool(v), n.doubleValue.isFinite else {
                throw ModelError.invalidConfig(key: k, value: "\(v)", expected: "a number")
            }
            return n.doubleValue
        }
        func flag(_ k: String, default d: Bool) throws -> Bool {
            guard let v = o[k], !(v is NSNull) else { return d }
            guard isJSONBool(v), let b = v as? Bool else { throw ModelError.invalidConfig(key: k, value: "\(v)", expected: "true or false") }
            return b
        }
        func tokenId(_ k: String) throws -> Int? {
            guard var v = o[k], !(v is NSNull) else { return nil }
            if let list = v as? [Any] {   // several end tokens (Llama 3): the first is used
                guard let first = list.first else { return nil }
                v = first
            }
            guard let n = v as? Int, !isJSONBool(v) else { throw ModelError.invalidConfig(key: k, value: "\(v)", expected: "an integer") }
            return n
        }
        guard let type = o["model_type"] as? String else { throw ModelError.missingConfig(key: "model_type") }
        guard let arch = Architecture(rawValue: type == "gemma3" ? "gemma3_text" : type) else {
            throw ModelError.unsupportedConfig(key: "model_type", value: "\"\(type)\"", supported: Architecture.allCases.map(\.rawValue).joined(separator: ", "))
        }
        let gemma = arch == .gemma3
        // What this implementation does not compute: refused by name rather than silently ignored.
        let actKey = gemma ? "hidden_activation" : "hidden_act"
        let activationName = (o[actKey] as? String) ?? (o["hidden_act"] as? String) ?? (gemma ? "gelu_pytorch_tanh" : "silu")
        guard let activation = Activation(rawValue: activationName), gemma == (activation == .geluTanh) else {
            throw ModelError.unsupportedConfig(key: actKey, value: "\"\(activationName)\"", supported: gemma ? "gelu_pytorch_tanh" : "silu")
        }
        if try flag("attention_bias", default: false) { throw ModelError.unsupportedConfig(key: "attention_bias", value: "true", supported: "false") }
        if try flag("mlp_bias", default: false) { throw ModelError.unsupportedConfig(key: "mlp_bias", value: "true", supported: "false") }
        if case let tp = try int("pretraining_tp", default: 1), tp != 1 { throw ModelError.unsupportedConfig(key: "pretraining_tp", value: "\(tp)", supported: "1") }
        if case let d = try double("attention_dropout", in: o, default: 0), d != 0 { throw ModelError.unsupportedConfig(key: "attention_dropout", value: "\(d)", supported: "0") }
        if case let d = try double("router_jitter_noise", in: o, default: 0), d != 0 { throw ModelError.unsupportedConfig(key: "router_jitter_noise", value: "\(d)", supported: "0") }
        for k in ["final_logit_softcapping", "attn_logit_softcapping"] {
            if let v = o[k], !(v is NSNull) { throw ModelError.unsupportedConfig(key: k, value: "\(v)", supported: "null") }
        }
        if try flag("use_bidirectional_attention", default: false) {
            throw ModelError.unsupportedConfig(key: "use_bidirectional_attention", value: "true", supported: "false")
        }
        let layers = try int("num_hidden_layers")
        // Sliding windows: Mistral slides on every layer; Qwen2/3 on layers >= max_window_layers when
        // use_sliding_window; Gemma 3 on the layers layer_types names (or all but every
        // sliding_window_pattern-th); an explicit layer_types list wins everywhere.
        var window: Int? = nil
        if let w = o["sliding_window"], !(w is NSNull) { window = try int("sliding_window") }
        var kinds = [LayerKind]()
        if let list = o["layer_types"], !(list is NSNull) {
            guard let names = list as? [String] else { throw ModelError.invalidConfig(key: "layer_types", value: "\(list)", expected: "a list of strings") }
            kinds = try names.map {
                guard let k = LayerKind(rawValue: $0) else { throw ModelError.unsupportedConfig(key: "layer_types", value: "\"\($0)\"", supported: "full_attention, sliding_attention") }
                return k
            }
            guard kinds.count == layers else { throw ModelError.invalidConfig(key: "layer_types", value: "\(kinds.count) layers", expected: "\(layers) (num_hidden_layers)") }
        }
        switch arch {
        case .llama, .mixtral:
            if window != nil && arch == .llama { throw ModelError.unsupportedConfig(key: "sliding_window", value: "\(window!)", supported: "null on llama") }
            if arch == .mixtral, window != nil { kinds = Array(repeating: .sliding, count: layers) }
        case .mistral:
            if window != nil && kinds.isEmpty { kinds = Array(repeating: .sliding, count: layers) }
        case .qwen2, .qwen3:
            let use = try flag("use_sliding_window", default: false)
            if !use { kinds = kinds.isEmpty ? [] : kinds.map { _ in .full }; window = nil }
            else if kinds.isEmpty {
                let from = try int("max_window_layers", default: layers)
                kinds = (0..<layers).map { $0 >= from ? .sliding : .full }
            }
        case .gemma3:
            if kinds.isEmpty {
                let pattern = try int("sliding_window_pattern", default: try int("_sliding_window_pattern", default: 6))
                guard pattern >= 1 else { throw ModelError.invalidConfig(key: "sliding_window_pattern", value: "\(pattern)", expected: ">= 1") }
                kinds = (0..<layers).map { ($0 + 1) % pattern == 0 ? .full : .sliding }
            }
        }
        if !kinds.contains(.sliding) { window = nil }
        if kinds.contains(.sliding) && window == nil { throw ModelError.invalidConfig(key: "sliding_window", value: "null", expected: "a window (layer_types has sliding layers)") }
        if let f = o["partial_rotary_factor"] as? NSNumber, f.doubleValue != 1 {
            throw ModelError.unsupportedConfig(key: "partial_rotary_factor", value: "\(f)", supported: "1")
        }

        // The project's own keys: every one known and of its type, or refused by name.
        var own = [String: Any]()
        if let v = o["long_attention"], !(v is NSNull) {
            guard let d = v as? [String: Any] else { throw ModelError.invalidConfig(key: "long_attention", value: "\(v)", expected: "an object") }
            own = d
        }
        let ownKeys = ["layers", "position_encoding", "rope_ntk", "expert_sizes"]
        if let unknown = own.keys.sorted().first(where: { !ownKeys.contains($0) }) {
            throw ModelError.unsupportedConfig(key: "long_attention.\(unknown)", value: "\(own[unknown]!)", supported: "the keys " + ownKeys.joined(separator: ", "))
        }
        let maxPositions = try int("max_position_embeddings", default: 2048)
        // RoPE: rope_parameters (transformers 5; Gemma 3 keys it by layer type), else rope_theta +
        // rope_scaling (4.x; Gemma 3's sliding layers then take rope_local_base_freq).
        var rope = o["rope_parameters"] as? [String: Any]
        var slidingRope: [String: Any]? = nil
        if let r = rope, let full = r["full_attention"] as? [String: Any] {
            rope = full
            slidingRope = r["sliding_attention"] as? [String: Any]
        }
        if rope == nil {
            var r: [String: Any] = ["rope_theta": o["rope_theta"] ?? (gemma ? 1_000_000.0 : 10000.0)]
            if let sc = o["rope_scaling"] as? [String: Any] {
                for (k, v) in sc { r[k] = v }
                r["rope_type"] = sc["rope_type"] ?? sc["type"] ?? "default"
            }
            rope = r
            if gemma { slidingRope = ["rope_theta": o["rope_local_base_freq"] ?? 10000.0, "rope_type": "default"] }
        }
        let (theta, parsedScaling) = try Self.rope(rope!, maxPositions: maxPositions)
        var (baseTheta, scaling) = (theta, parsedScaling)
        if let v = own["rope_ntk"] {
            guard let ntk = v as? [String: Any] else {
                throw ModelError.invalidConfig(key: "long_attention.rope_ntk", value: "\(v)", expected: "an object {\"theta\", \"factor\"}")
            }
            if let unknown = ntk.keys.sorted().first(where: { $0 != "theta" && $0 != "factor" }) {
                throw ModelError.unsupportedConfig(key: "long_attention.rope_ntk.\(unknown)", value: "\(ntk[unknown]!)", supported: "the keys theta, factor")
            }
            // Written as default RoPE with the scaled base (what transformers computes); the
            // unscaled base and factor are kept here so the model knows what it was extended from.
            do {
                baseTheta = try double("theta", in: ntk)
                scaling = .ntk(factor: try double("factor", in: ntk))
            } catch ModelError.invalidConfig(let k, let v, let e) {
                throw ModelError.invalidConfig(key: "long_attention.rope_ntk.\(k)", value: v, expected: e)
            } catch ModelError.missingConfig(let k) { throw ModelError.missingConfig(key: "long_attention.rope_ntk.\(k)") }
        }
        var positions = PositionEncoding.rope(theta: baseTheta, scaling: scaling)
        if let v = own["position_encoding"] {
            guard let p = v as? String else {
                throw ModelError.invalidConfig(key: "long_attention.position_encoding", value: "\(v)", expected: "a string (rope, alibi)")
            }
            switch p {
            case "rope": break
            case "alibi": positions = .alibi
            default: throw ModelError.unsupportedConfig(key: "long_attention.position_encoding", value: "\"\(p)\"", supported: "rope, alibi")
            }
        }
        var attention: [LayerAttention]? = nil
        if let list = own["layers"] {
            guard let items = list as? [Any] else { throw ModelError.invalidConfig(key: "long_attention.layers", value: "\(list)", expected: "a list") }
            attention = try items.enumerated().map { try LayerAttention(json: $1, index: $0) }
        }
        let heads = try int("num_attention_heads")
        var headDim: Int? = nil
        if let hd = o["head_dim"], !(hd is NSNull) { headDim = try int("head_dim") }
        try self.init(
            architecture: arch, vocabSize: try int("vocab_size"), hiddenSize: try int("hidden_size"),
            intermediateSize: try int("intermediate_size"), layers: layers, heads: heads,
            kvHeads: try int("num_key_value_heads", default: heads), headDim: headDim,
            rmsNormEps: try double("rms_norm_eps", in: o, default: 1e-6), positions: positions,
            tieWordEmbeddings: try flag("tie_word_embeddings", default: false),
            maxPositionEmbeddings: maxPositions,
            bosTokenId: try tokenId("bos_token_id"), eosTokenId: try tokenId("eos_token_id"),
            experts: arch == .mixtral ? try int("num_local_experts") : 0,
            expertsPerToken: arch == .mixtral ? try int("num_experts_per_tok") : 0,
            routerAuxLossCoef: try double("router_aux_loss_coef", in: o, default: 0.02),
            expertSizes: try own["expert_sizes"].map { value in
                guard let list = value as? [Any] else {
                    throw ModelError.invalidConfig(key: "long_attention.expert_sizes", value: "\(value)", expected: "a list of integers")
                }
                return try list.map { v -> Int in
                    guard let n = v as? NSNumber, !isJSONBool(v), let i = Int(n.stringValue) else {
                        throw ModelError.invalidConfig(key: "long_attention.expert_sizes", value: "\(v)", expected: "integers")
                    }
                    return i
                }
            },
            attention: attention)
        // The family's pieces.
        qkvBias = arch == .qwen2
        queryKeyNorm = arch == .qwen3 || gemma
        sandwichNorms = gemma
        normWeightOffset = gemma ? 1 : 0
        self.activation = activation
        if gemma {
            embeddingScale = Float(Double(hiddenSize).squareRoot())
            attentionScale = 1 / (try double("query_pre_attn_scalar", in: o, default: Double(self.headDim))).squareRoot()
            tieWordEmbeddings = try flag("tie_word_embeddings", default: true)
        }
        slidingWindow = window
        layerKinds = kinds.isEmpty ? [] : kinds
        if let r = slidingRope, layerKinds.contains(.sliding) {
            let (t, sc) = try Self.rope(r, maxPositions: maxPositions)
            slidingPositions = .rope(theta: t, scaling: sc)
        }
        if let list = o["eos_token_id"] as? [Any] {
            endTokenIds = try list.map { v in
                guard let n = v as? Int, !isJSONBool(v) else { throw ModelError.invalidConfig(key: "eos_token_id", value: "\(v)", expected: "a list of integers") }
                return n
            }
        } else if let e = eosTokenId { endTokenIds = [e] }
        try validate()
    }

    /// RoPE's base and scaling from a `rope_parameters` dictionary (or 4.x's `rope_scaling` merged
    /// with `rope_theta`). Keys that change the computation and are not implemented are refused.
    static func rope(_ r: [String: Any], maxPositions: Int) throws -> (theta: Double, scaling: RopeScaling) {
        func num(_ k: String, _ d: Double? = nil) throws -> Double {
            guard let v = r[k], !(v is NSNull) else {
                if let d { return d }
                throw ModelError.missingConfig(key: "rope_parameters.\(k)")
            }
            guard let n = v as? NSNumber, !isJSONBool(v), n.doubleValue.isFinite else {
                throw ModelError.invalidConfig(key: "rope_parameters.\(k)", value: "\(v)", expected: "a number")
            }
            return n.doubleValue
        }
        func count(_ k: String, _ d: Int) throws -> Int {
            let v = try num(k, Double(d))
            guard v >= 1, v == v.rounded(), v < 1e12 else { throw ModelError.invalidConfig(key: "rope_parameters.\(k)", value: "\(v)", expected: "a positive integer") }
            return Int(v)
        }
        let theta = try num("rope_theta", 10000)
        if let f = r["partial_rotary_factor"] as? NSNumber, f.doubleValue != 1 {
            throw ModelError.unsupportedConfig(key: "partial_rotary_factor", value: "\(f)", supported: "1")
        }
        let type = r["rope_type"] as? String ?? r["type"] as? String ?? "default"
        switch type {
        case "default": return (theta, .none)
        case "linear": return (theta, .linear(factor: try num("factor")))
        case "dynamic": return (theta, .dynamic(factor: try num("factor")))
        case "llama3":
            return (theta, .llama3(factor: try num("factor"), lowFrequencyFactor: try num("low_freq_factor"),
                                   highFrequencyFactor: try num("high_freq_factor"),
                                   originalContext: try count("original_max_position_embeddings", maxPositions)))
        case "yarn":
            let original = try count("original_max_position_embeddings", maxPositions)
            let factor = try num("factor", Double(maxPositions) / Double(original))
            func mscale(_ scale: Double, _ m: Double) -> Double { scale <= 1 ? 1 : 0.1 * m * Foundation.log(scale) + 1 }
            var attentionFactor = try num("attention_factor", 0)
            if attentionFactor == 0 {
                let m = try num("mscale", 0), all = try num("mscale_all_dim", 0)
                attentionFactor = m != 0 && all != 0 ? mscale(factor, m) / mscale(factor, all) : mscale(factor, 1)
            }
            let truncate = (r["truncate"] as? Bool) ?? true
            let fast = try num("beta_fast", 32), slow = try num("beta_slow", 1)
            return (theta, .yarn(factor: factor, originalContext: original, betaFast: fast == 0 ? 32 : fast,
                                 betaSlow: slow == 0 ? 1 : slow, attentionFactor: attentionFactor, truncate: truncate))
        default:
            throw ModelError.unsupportedConfig(key: "rope_type", value: "\"\(type)\"", supported: "default, linear, dynamic, llama3, yarn")
        }
    }

    /// One `rope_parameters` dictionary (NTK is written as default RoPE with the scaled base).
    static func ropeJSON(theta: Double, scaling: RopeScaling, headDim: Int) -> [String: Any] {
        switch scaling {
        case .none: return ["rope_type": "default", "rope_theta": theta]
        case .linear(let f): return ["rope_type": "linear", "rope_theta": theta, "factor": f]
        case .ntk(let f):
            return ["rope_type": "default", "rope_theta": headDim > 2 ? theta * Foundation.pow(f, Double(headDim) / Double(headDim - 2)) : theta]
        case .dynamic(let f): return ["rope_type": "dynamic", "rope_theta": theta, "factor": f]
        case .llama3(let f, let lo, let hi, let c):
            return ["rope_type": "llama3", "rope_theta": theta, "factor": f, "low_freq_factor": lo, "high_freq_factor": hi,
                    "original_max_position_embeddings": c]
        case .yarn(let f, let c, let fast, let slow, let a, let t):
            return ["rope_type": "yarn", "rope_theta": theta, "factor": f, "original_max_position_embeddings": c,
                    "beta_fast": fast, "beta_slow": slow, "attention_factor": a, "truncate": t]
        }
    }

    /// Reads `DIR/config.json`.
    public init(contentsOf path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ModelError.unreadableConfig(file: path)
        }
        try self.init(jsonData: data)
    }

    /// config.json as transformers writes it for this architecture, with the project's own keys
    /// under `long_attention`.
    public func jsonData() throws -> Data {
        let className: String = switch architecture {
        case .llama: "LlamaForCausalLM"
        case .mixtral: "MixtralForCausalLM"
        case .mistral: "MistralForCausalLM"
        case .qwen2: "Qwen2ForCausalLM"
        case .qwen3: "Qwen3ForCausalLM"
        case .gemma3: "Gemma3ForCausalLM"
        }
        var o: [String: Any] = [
            "model_type": architecture.rawValue,
            "architectures": [className],
            "vocab_size": vocabSize, "hidden_size": hiddenSize, "intermediate_size": intermediateSize,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kvHeads,
            "head_dim": headDim, architecture == .gemma3 ? "hidden_activation" : "hidden_act": activation.rawValue,
            "rms_norm_eps": rmsNormEps,
            "max_position_embeddings": maxPositionEmbeddings, "tie_word_embeddings": tieWordEmbeddings,
            "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": true, "dtype": "float32",
        ]
        if architecture == .llama { o["attention_bias"] = false; o["mlp_bias"] = false; o["pretraining_tp"] = 1 }
        if architecture == .qwen3 || architecture == .gemma3 { o["attention_bias"] = false }
        if architecture == .qwen2 || architecture == .qwen3 { o["use_sliding_window"] = slidingWindow != nil }
        if architecture == .gemma3 {
            o["query_pre_attn_scalar"] = 1 / ((attentionScale ?? 1 / Double(headDim).squareRoot()) * (attentionScale ?? 1 / Double(headDim).squareRoot()))
            o["final_logit_softcapping"] = NSNull()
            o["attn_logit_softcapping"] = NSNull()
        }
        if architecture != .mixtral { o["sliding_window"] = slidingWindow.map { $0 as Any } ?? NSNull() }
        if !layerKinds.isEmpty { o["layer_types"] = layerKinds.map(\.rawValue) }
        if endTokenIds.count > 1 { o["eos_token_id"] = endTokenIds }
        if let bosTokenId { o["bos_token_id"] = bosTokenId }
        if let eosTokenId, endTokenIds.count <= 1 { o["eos_token_id"] = eosTokenId }
        var own: [String: Any] = ["layers": attention.map(\.json)]
        switch positions {
        case .rope(let theta, let scaling):
            own["position_encoding"] = "rope"
            var full = Self.ropeJSON(theta: theta, scaling: scaling, headDim: headDim)
            if case .ntk(let f) = scaling { own["rope_ntk"] = ["theta": theta, "factor": f] }
            if let sp = slidingPositions, case .rope(let t, let sc) = sp {
                // transformers 5's per-layer-type form.
                full = ["full_attention": full, "sliding_attention": Self.ropeJSON(theta: t, scaling: sc, headDim: headDim)]
            }
            o["rope_parameters"] = full
        case .alibi:
            // transformers has no ALiBi Llama: it would load this checkpoint as a RoPE model.
            o["rope_parameters"] = ["rope_type": "default", "rope_theta": 10000.0]
            own["position_encoding"] = "alibi"
        }
        if architecture == .mixtral {
            o["num_local_experts"] = experts
            o["num_experts_per_tok"] = expertsPerToken
            o["router_aux_loss_coef"] = routerAuxLossCoef
            o["router_jitter_noise"] = 0.0
            o["output_router_logits"] = false
            o["sliding_window"] = NSNull()
            if let expertSizes { own["expert_sizes"] = expertSizes }
        }
        o["long_attention"] = own
        return Data((jsonText(o) + "\n").utf8)
    }
}

/// Whether a JSONSerialization value is a JSON `true`/`false` (on Linux every number also casts
/// to Bool, so the boxed type is what tells them apart).
func isJSONBool(_ v: Any) -> Bool {
    (v as? NSNumber).map { String(cString: $0.objCType) == "c" } ?? false
}
