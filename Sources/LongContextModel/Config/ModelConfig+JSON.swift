import Foundation

/// config.json in Hugging Face's format (transformers 4.x top-level `rope_theta`/`rope_scaling`
/// and 5.x `rope_parameters` are both read; `rope_parameters` is written).
extension ModelConfig {
    /// Reads config.json. Keys that change the computation and that this implementation does not
    /// have (biases, other activations, other RoPE types, sliding windows, dropout, router jitter)
    /// are refused by name; bookkeeping keys (architectures, dtype, initializer_range, …) are ignored.
    public init(jsonData data: Data) throws {
        guard let any = try? JSONSerialization.jsonObject(with: data), let o = any as? [String: Any] else {
            throw ModelError.invalidConfig("config.json is not a JSON object")
        }
        func int(_ k: String, default d: Int? = nil) throws -> Int {
            guard let v = o[k], !(v is NSNull) else {
                if let d { return d }
                throw ModelError.invalidConfig("\(k) is missing")
            }
            guard let n = v as? NSNumber, !isJSONBool(v), n.doubleValue == n.doubleValue.rounded(), abs(n.doubleValue) < 1e15 else {
                throw ModelError.invalidConfig("\(k) must be an integer, got \(v)")
            }
            return n.intValue
        }
        func double(_ k: String, in obj: [String: Any], default d: Double? = nil) throws -> Double {
            guard let v = obj[k], !(v is NSNull) else {
                if let d { return d }
                throw ModelError.invalidConfig("\(k) is missing")
            }
            guard let n = v as? NSNumber, !isJSONBool(v), n.doubleValue.isFinite else {
                throw ModelError.invalidConfig("\(k) must be a number, got \(v)")
            }
            return n.doubleValue
        }
        func flag(_ k: String, default d: Bool) throws -> Bool {
            guard let v = o[k], !(v is NSNull) else { return d }
            guard isJSONBool(v), let b = v as? Bool else { throw ModelError.invalidConfig("\(k) must be true or false, got \(v)") }
            return b
        }
        func tokenId(_ k: String) throws -> Int? {
            guard var v = o[k], !(v is NSNull) else { return nil }
            if let list = v as? [Any] {   // several end tokens (Llama 3): the first is used
                guard let first = list.first else { return nil }
                v = first
            }
            guard let n = v as? Int, !isJSONBool(v) else { throw ModelError.invalidConfig("\(k) must be an integer, got \(v)") }
            return n
        }
        guard let type = o["model_type"] as? String else { throw ModelError.invalidConfig("model_type is missing") }
        guard let arch = Architecture(rawValue: type) else {
            throw ModelError.invalidConfig("model_type \"\(type)\" is not supported (llama, mixtral)")
        }
        // What this implementation does not compute: refused by name rather than silently ignored.
        if let act = o["hidden_act"] as? String, act != "silu" { throw ModelError.invalidConfig("hidden_act \"\(act)\" is not supported (silu)") }
        if try flag("attention_bias", default: false) { throw ModelError.invalidConfig("attention_bias = true is not supported") }
        if try flag("mlp_bias", default: false) { throw ModelError.invalidConfig("mlp_bias = true is not supported") }
        if try int("pretraining_tp", default: 1) != 1 { throw ModelError.invalidConfig("pretraining_tp other than 1 is not supported") }
        if try double("attention_dropout", in: o, default: 0) != 0 { throw ModelError.invalidConfig("attention_dropout other than 0 is not supported") }
        if try double("router_jitter_noise", in: o, default: 0) != 0 { throw ModelError.invalidConfig("router_jitter_noise other than 0 is not supported") }
        if let w = o["sliding_window"], !(w is NSNull) { throw ModelError.invalidConfig("sliding_window is not supported (null)") }

        let own = o["long_attention"] as? [String: Any] ?? [:]
        // RoPE: rope_parameters (transformers 5), else rope_theta + rope_scaling (4.x).
        var rope = o["rope_parameters"] as? [String: Any]
        if rope == nil {
            var r: [String: Any] = ["rope_theta": o["rope_theta"] ?? 10000.0]
            if let s = o["rope_scaling"] as? [String: Any] {
                r["rope_type"] = s["rope_type"] ?? s["type"] ?? "default"
                r["factor"] = s["factor"]
            }
            rope = r
        }
        let theta = try double("rope_theta", in: rope!, default: 10000)
        let ropeType = rope!["rope_type"] as? String ?? "default"
        var scaling: RopeScaling
        switch ropeType {
        case "default": scaling = .none
        case "linear": scaling = .linear(factor: try double("factor", in: rope!))
        default: throw ModelError.invalidConfig("rope_type \"\(ropeType)\" is not supported (default, linear)")
        }
        var baseTheta = theta
        if let ntk = own["rope_ntk"] as? [String: Any] {
            // Written as default RoPE with the scaled base (what transformers computes); the
            // unscaled base and factor are kept here so the model knows what it was extended from.
            baseTheta = try double("theta", in: ntk)
            scaling = .ntk(factor: try double("factor", in: ntk))
        }
        var positions = PositionEncoding.rope(theta: baseTheta, scaling: scaling)
        if let p = own["position_encoding"] as? String {
            switch p {
            case "rope": break
            case "alibi": positions = .alibi
            default: throw ModelError.invalidConfig("long_attention.position_encoding \"\(p)\" (rope, alibi)")
            }
        }
        let layers = try int("num_hidden_layers")
        var attention: [LayerAttention]? = nil
        if let list = own["layers"] {
            guard let items = list as? [Any] else { throw ModelError.invalidConfig("long_attention.layers must be a list") }
            attention = try items.map(LayerAttention.init(json:))
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
            maxPositionEmbeddings: try int("max_position_embeddings", default: 2048),
            bosTokenId: try tokenId("bos_token_id"), eosTokenId: try tokenId("eos_token_id"),
            experts: arch == .mixtral ? try int("num_local_experts") : 0,
            expertsPerToken: arch == .mixtral ? try int("num_experts_per_tok") : 0,
            routerAuxLossCoef: try double("router_aux_loss_coef", in: o, default: 0.02),
            expertSizes: try (own["expert_sizes"] as? [Any]).map { list in
                try list.map { v -> Int in
                    guard let n = v as? Int else { throw ModelError.invalidConfig("long_attention.expert_sizes must be integers") }
                    return n
                }
            },
            attention: attention)
    }

    /// Reads `DIR/config.json`.
    public init(contentsOf path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ModelError.invalidConfig("cannot read \(path)")
        }
        try self.init(jsonData: data)
    }

    /// config.json as transformers writes it for this architecture, with the project's own keys
    /// under `long_attention`.
    public func jsonData() throws -> Data {
        var o: [String: Any] = [
            "model_type": architecture.rawValue,
            "architectures": [architecture == .llama ? "LlamaForCausalLM" : "MixtralForCausalLM"],
            "vocab_size": vocabSize, "hidden_size": hiddenSize, "intermediate_size": intermediateSize,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kvHeads,
            "head_dim": headDim, "hidden_act": "silu", "rms_norm_eps": rmsNormEps,
            "max_position_embeddings": maxPositionEmbeddings, "tie_word_embeddings": tieWordEmbeddings,
            "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": true, "dtype": "float32",
        ]
        if architecture == .llama { o["attention_bias"] = false; o["mlp_bias"] = false; o["pretraining_tp"] = 1 }
        if let bosTokenId { o["bos_token_id"] = bosTokenId }
        if let eosTokenId { o["eos_token_id"] = eosTokenId }
        var own: [String: Any] = ["layers": attention.map(\.json)]
        switch positions {
        case .rope(let theta, let scaling):
            own["position_encoding"] = "rope"
            switch scaling {
            case .none: o["rope_parameters"] = ["rope_type": "default", "rope_theta": theta]
            case .linear(let f): o["rope_parameters"] = ["rope_type": "linear", "rope_theta": theta, "factor": f]
            case .ntk(let f):
                o["rope_parameters"] = ["rope_type": "default", "rope_theta": headDim > 2 ? theta * Foundation.pow(f, Double(headDim) / Double(headDim - 2)) : theta]
                own["rope_ntk"] = ["theta": theta, "factor": f]
            }
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
