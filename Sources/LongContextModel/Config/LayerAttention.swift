import Foundation
import AttentionTensor
import LongAttention

/// The attention variant of one decoder layer, a runtime option saved in config.json under the
/// project's own key. All are causal; all read the same q, k, v projections, so a pretrained
/// exact-attention model can be switched to another variant and fine-tuned.
public enum LayerAttention: Sendable, Equatable {
    /// Exact softmax attention (FlashAttention-style forward and backward).
    case exact
    /// BigBird block-sparse attention: block size, sliding-window blocks, random blocks per row, seed.
    case bigbird(blockSize: Int, windowBlocks: Int, randomBlocks: Int, seed: UInt64)
    /// Causal linear attention with φ = elu + 1 or relu.
    case linear(featureMap: LinearFeatureMap)
    /// Infini-Attention: segments of `segment` tokens with a compressive memory (linear or delta
    /// update) and a learned gate β per head (parameter `self_attn.infini_beta`).
    case infini(segment: Int, update: InfiniAttention.Update)

    public var name: String {
        switch self {
        case .exact: return "exact"
        case .bigbird: return "bigbird"
        case .linear: return "linear"
        case .infini: return "infini"
        }
    }

    var supportsALiBi: Bool {
        switch self {
        case .exact, .bigbird: return true
        default: return false
        }
    }

    /// Whether the layer has the gate parameter β.
    var hasBeta: Bool { if case .infini = self { return true } else { return false } }

    func validate(heads: Int, headDim: Int) throws {
        switch self {
        case .exact: break
        case .bigbird(let b, let w, let r, _):
            try requireConfig(b >= 1, "block_size", b, "at least 1 (BigBird)")
            try requireConfig(w >= 1 && w % 2 == 1, "window_blocks", w, "odd and at least 1 (BigBird)")
            try requireConfig(r >= 0, "random_blocks", r, ">= 0 (BigBird)")
        case .linear(let map):
            guard map == .elu || map == .relu else {
                throw ModelError.unsupportedConfig(key: "feature_map", value: map.name, supported: "elu, relu (causal linear attention)")
            }
        case .infini(let s, _):
            try requireConfig(s >= 1, "segment", s, "at least 1 (Infini-Attention)")
        }
    }

    /// The JSON form under `long_attention.layers` (the BigBird seed as an unsigned 64-bit integer).
    var json: [String: Any] {
        switch self {
        case .exact: return ["type": "exact"]
        case .bigbird(let b, let w, let r, let seed):
            return ["type": "bigbird", "block_size": b, "window_blocks": w, "random_blocks": r, "seed": seed]
        case .linear(let map): return ["type": "linear", "feature_map": map.name]
        case .infini(let s, let u): return ["type": "infini", "segment": s, "update": u.rawValue]
        }
    }

    /// The keys each type takes (besides `type`).
    static let keys: [String: [String]] = [
        "exact": [], "bigbird": ["block_size", "window_blocks", "random_blocks", "seed"],
        "linear": ["feature_map"], "infini": ["segment", "update"],
    ]

    /// Reads entry `index` of `long_attention.layers`. Unknown keys and values of the wrong type
    /// are refused by name (a misspelt `segment_size` would otherwise run with the default).
    init(json: Any, index: Int = 0) throws {
        let at = "long_attention.layers[\(index)]"
        guard let o = json as? [String: Any], let type = o["type"] as? String else {
            throw ModelError.invalidConfig(key: at, value: "\(json)", expected: "an object with a string \"type\"")
        }
        guard let allowed = Self.keys[type] else {
            throw ModelError.unsupportedConfig(key: at + ".type", value: "\"\(type)\"", supported: "exact, bigbird, linear, infini")
        }
        if let unknown = o.keys.sorted().first(where: { $0 != "type" && !allowed.contains($0) }) {
            throw ModelError.unsupportedConfig(key: at + ".\(unknown)", value: "\(o[unknown]!)",
                                               supported: "\(type) attention takes " + (allowed.isEmpty ? "no keys" : allowed.joined(separator: ", ")))
        }
        func int(_ k: String, _ d: Int) throws -> Int {
            guard let v = o[k] else { return d }
            guard let n = v as? NSNumber, !isJSONBool(v), let i = Int(n.stringValue) else {
                throw ModelError.invalidConfig(key: at + ".\(k)", value: "\(v)", expected: "an integer")
            }
            return i
        }
        func string(_ k: String, _ d: String) throws -> String {
            guard let v = o[k] else { return d }
            guard let s = v as? String else { throw ModelError.invalidConfig(key: at + ".\(k)", value: "\(v)", expected: "a string") }
            return s
        }
        switch type {
        case "exact": self = .exact
        case "bigbird":
            var seed: UInt64 = 0
            if let v = o["seed"] {
                // The whole UInt64 range: a seed is bits, and 2^63 ... 2^64 − 1 must not come back as 0.
                // Earlier versions wrote those seeds as their two's-complement Int64: read back as bits.
                guard let n = v as? NSNumber, !isJSONBool(v),
                      let u = UInt64(n.stringValue) ?? Int64(n.stringValue).map({ UInt64(bitPattern: $0) }) else {
                    throw ModelError.invalidConfig(key: at + ".seed", value: "\(v)", expected: "an integer in 0...\(UInt64.max)")
                }
                seed = u
            }
            self = .bigbird(blockSize: try int("block_size", 64), windowBlocks: try int("window_blocks", 3),
                            randomBlocks: try int("random_blocks", 3), seed: seed)
        case "linear":
            switch try string("feature_map", "elu") {
            case "elu": self = .linear(featureMap: .elu)
            case "relu": self = .linear(featureMap: .relu)
            case let m: throw ModelError.unsupportedConfig(key: at + ".feature_map", value: m, supported: "elu, relu (causal linear attention)")
            }
        case "infini":
            let name = try string("update", "linear")
            guard let u = InfiniAttention.Update(rawValue: name) else {
                throw ModelError.unsupportedConfig(key: at + ".update", value: name, supported: "linear, delta")
            }
            self = .infini(segment: try int("segment", 2048), update: u)
        default: preconditionFailure("type \(type) is in keys")
        }
    }
}
