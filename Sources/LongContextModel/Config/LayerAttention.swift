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
            guard b >= 1, w >= 1, w % 2 == 1, r >= 0 else {
                throw ModelError.invalidConfig("BigBird needs block size >= 1, an odd window >= 1 and random blocks >= 0, got \(b), \(w), \(r)")
            }
        case .linear(let map):
            guard map == .elu || map == .relu else {
                throw ModelError.invalidConfig("causal linear attention takes the elu or relu feature map, not \(map.name)")
            }
        case .infini(let s, _):
            guard s >= 1 else { throw ModelError.invalidConfig("Infini segment must be at least 1, got \(s)") }
        }
    }

    /// The JSON form under `long_attention.layers`.
    var json: [String: Any] {
        switch self {
        case .exact: return ["type": "exact"]
        case .bigbird(let b, let w, let r, let seed):
            return ["type": "bigbird", "block_size": b, "window_blocks": w, "random_blocks": r, "seed": Int(truncatingIfNeeded: seed)]
        case .linear(let map): return ["type": "linear", "feature_map": map.name]
        case .infini(let s, let u): return ["type": "infini", "segment": s, "update": u.rawValue]
        }
    }

    init(json: Any) throws {
        guard let o = json as? [String: Any], let type = o["type"] as? String else {
            throw ModelError.invalidConfig("long_attention.layers entries must be objects with a \"type\"")
        }
        func int(_ k: String, _ d: Int) throws -> Int {
            guard let v = o[k] else { return d }
            guard let i = v as? Int else { throw ModelError.invalidConfig("long_attention: \(k) must be an integer") }
            return i
        }
        switch type {
        case "exact": self = .exact
        case "bigbird":
            self = .bigbird(blockSize: try int("block_size", 64), windowBlocks: try int("window_blocks", 3),
                            randomBlocks: try int("random_blocks", 3), seed: UInt64(max(0, try int("seed", 0))))
        case "linear":
            switch o["feature_map"] as? String ?? "elu" {
            case "elu": self = .linear(featureMap: .elu)
            case "relu": self = .linear(featureMap: .relu)
            case let m: throw ModelError.invalidConfig("long_attention: causal linear attention takes elu or relu, not \(m)")
            }
        case "infini":
            guard let u = InfiniAttention.Update(rawValue: o["update"] as? String ?? "linear") else {
                throw ModelError.invalidConfig("long_attention: infini update must be linear or delta")
            }
            self = .infini(segment: try int("segment", 2048), update: u)
        default: throw ModelError.invalidConfig("long_attention: unknown attention type \"\(type)\" (exact, bigbird, linear, infini)")
        }
    }
}
