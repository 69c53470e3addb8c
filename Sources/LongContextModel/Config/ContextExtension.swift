import Foundation

/// Context extension applied to a pretrained model at load time, without a fine-tune: a RoPE
/// scaling of its full layers, and StreamingLLM's attention sinks + window.
///
/// The original context is the model's own (`max_position_embeddings`, a GGUF's
/// `context_length`); it is never raised, so dynamic NTK and YaRN scale from it as transformers does:
/// - `linear F`: positions divided by F (position interpolation);
/// - `ntk F`: the base times F^(d/(d−2)) (NTK-aware);
/// - `dynamic F`: the base recomputed from the sequence length L > C as `base·(F·L/C − (F − 1))^(d/(d−2))`
///   (transformers' `_compute_dynamic_ntk_parameters`; L is the forward's length, or the cache's
///   length at each decoding step);
/// - `yarn F`: transformers' `_compute_yarn_parameters` with beta_fast 32, beta_slow 1, truncation,
///   and the attention factor 0.1·ln F + 1 applied to cos and sin.
/// Gemma 3's sliding layers keep their own RoPE (`rope_local_base_freq`): scaling applies to the
/// full (global) layers only, as transformers does.
public struct ContextExtension: Sendable, Equatable {
    public enum Method: String, Sendable, CaseIterable {
        case none, linear, ntk, dynamic, yarn
    }

    public var method: Method
    public var factor: Double
    public var streaming: StreamingWindow?

    /// `method` by name (`none`, `linear`, `ntk`, `dynamic`, `yarn`) with `factor` (ignored by none,
    /// otherwise at least 1); `sinks`/`window` together or not at all.
    public init(method name: String = "none", factor: Double = 1, sinks: Int? = nil, window: Int? = nil) throws {
        guard let m = Method(rawValue: name) else {
            throw ModelError.invalidOption(name: "--rope-scaling", value: name, expected: "one of none, linear, ntk, dynamic, yarn")
        }
        try requireOption(factor.isFinite && factor > 0, "--rope-factor", factor, "> 0")
        if m != .none, factor < 1 {
            throw ModelError.invalidOption(name: "--rope-factor", value: "\(factor)", expected: "at least 1 for \(name) scaling (it stretches the context)")
        }
        switch (sinks, window) {
        case (nil, nil): streaming = nil
        case (let s?, let w?):
            try requireOption(s >= 0, "--sinks", s, ">= 0")
            try requireOption(w >= 1, "--attention-window", w, ">= 1")
            streaming = StreamingWindow(sinks: s, window: w)
        case (let s?, nil): throw ModelError.invalidOption(name: "--sinks", value: "\(s)", expected: "given with --attention-window")
        case (nil, let w?): streaming = StreamingWindow(sinks: 0, window: w)
        }
        method = m
        self.factor = factor
    }

    /// Whether this changes anything.
    public var isIdentity: Bool { method == .none && streaming == nil }

    /// `config` with the scaling on its full layers and the sinks + window; throws when the model
    /// has no RoPE or when `sinks + window` exceeds its trained context.
    public func apply(to config: ModelConfig) throws -> ModelConfig {
        var c = config
        guard case .rope(let theta, _) = c.positions else {
            if method != .none { throw ModelError.unsupportedModel(operation: "RoPE scaling", requirement: "a RoPE model") }
            if streaming != nil { throw ModelError.unsupportedModel(operation: "attention sinks + window", requirement: "a RoPE model") }
            return c
        }
        let C = c.maxPositionEmbeddings
        // Sliding layers keep the positions they had (Gemma 3's local base).
        if c.layerKinds.contains(.sliding), c.slidingPositions == nil { c.slidingPositions = c.positions }
        switch method {
        case .none: c.positions = .rope(theta: theta, scaling: .none)
        case .linear: c.positions = .rope(theta: theta, scaling: .linear(factor: factor))
        case .ntk: c.positions = .rope(theta: theta, scaling: .ntk(factor: factor))
        case .dynamic: c.positions = .rope(theta: theta, scaling: .dynamic(factor: factor))
        case .yarn:
            c.positions = .rope(theta: theta, scaling: .yarn(factor: factor, originalContext: C, betaFast: 32, betaSlow: 1,
                                                            attentionFactor: factor <= 1 ? 1 : 0.1 * Foundation.log(factor) + 1, truncate: true))
        }
        if let st = streaming {
            guard st.sinks + st.window <= C else {
                throw ModelError.invalidOption(name: "--sinks + --attention-window", value: "\(st.sinks) + \(st.window)", expected: "at most the model's trained context of \(C) positions")
            }
            c.streaming = st
        }
        try c.validate()
        return c
    }

    /// "yarn ×4", "none", with " + sinks 4 + window 2044".
    public var description: String {
        var s = method == .none ? "none" : "\(method.rawValue) ×\(factor)"
        if let st = streaming { s += " + sinks \(st.sinks) + window \(st.window)" }
        return s
    }
}
