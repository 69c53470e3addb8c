import AttentionTensor
import CAttentionKernels
import Foundation
import LongAttention

/// What replaces a pretrained model's attention, without training (or before a short fine-tune).
public enum AttentionRefit: Sendable, Equatable {
    /// Exact attention (the model as trained).
    case exact
    /// Causal BigBird (block size, window blocks, random blocks, seed): one global block (the sinks).
    case bigbird(blockSize: Int, windowBlocks: Int, randomBlocks: Int, seed: UInt64)
    /// Exact attention within a sliding window of W positions (the layer keeps its RoPE).
    case sliding(window: Int)
    /// Infini-Attention with segments of S tokens; every head's gate β starts at `beta`
    /// (sigmoid(β) is the memory's share: a very negative β reads local attention only).
    case infini(segment: Int, update: InfiniAttention.Update, beta: Float)

    public var name: String {
        switch self {
        case .exact: return "exact"
        case .bigbird: return "bigbird"
        case .sliding: return "sliding"
        case .infini: return "infini"
        }
    }
}

/// Which layers a refit replaces.
public enum RefitLayers: String, Sendable, CaseIterable {
    /// The layers trained with full attention (all of SmolLM2's; Gemma 3's every sixth): a model's
    /// own sliding-window layers stay as trained.
    case full
    /// Every layer (sliding layers only take `sliding`, which then sets their window).
    case all
}

extension CausalLM {
    /// The same weights (shared: frozen matrices and float32 vectors alike) with `refit` replacing the
    /// attention of `layers`. New parameters (Infini's gates) start at the refit's value; nothing is
    /// trained. Throws ``ModelError/unsupportedRefit(layer:refit:requirement:)`` for a combination the kernels do not compute.
    public func refitting(_ refit: AttentionRefit, layers which: RefitLayers = .full) throws -> CausalLM {
        var c = config
        let chosen = (0..<c.layers).filter { which == .all || !c.isSliding($0) }
        for layer in chosen {
            switch refit {
            case .exact: break
            case .bigbird(let b, let w, let r, let seed):
                guard !c.isSliding(layer) else {
                    throw ModelError.unsupportedRefit(layer: layer, refit: "BigBird", requirement: "a full-attention layer, not a sliding-window one (--layers full)")
                }
                c.attention[layer] = .bigbird(blockSize: b, windowBlocks: w, randomBlocks: r, seed: seed)
            case .sliding(let w):
                try requireOption(w >= 1, "sliding window W", w, ">= 1")
                if c.isSliding(layer) {
                    guard w == c.slidingWindow else {
                        throw ModelError.unsupportedRefit(layer: layer, refit: "a sliding window W = \(w)", requirement: "the window the layer already slides with, W = \(c.slidingWindow ?? 0) (or --layers full)")
                    }
                } else {
                    c.imposedWindows[layer] = w
                }
            case .infini(let s, let u, _):
                guard !c.isSliding(layer) else {
                    throw ModelError.unsupportedRefit(layer: layer, refit: "Infini-Attention", requirement: "a full-attention layer, not a sliding-window one (--layers full)")
                }
                c.attention[layer] = .infini(segment: s, update: u)
            }
        }
        try c.validate()
        // Every float32 parameter carried by name; frozen matrices shared as they are.
        let trainable = Self.layout(c).filter { frozen[$0.name] == nil }
        let p = try ParameterSet(layout: trainable)
        for e in p.entries {
            if let old = parameters.entry(e.name) {
                guard old.shape == e.shape else { throw ModelError.misshapenTensor(name: e.name, shape: old.shape, expected: e.shape, file: nil) }
                (p.scalars + e.offset).update(from: parameters.scalars + old.offset, count: e.count)
            } else if e.name.hasSuffix("self_attn.infini_beta"), case .infini(_, _, let beta) = refit {
                (p.scalars + e.offset).update(repeating: beta, count: e.count)
            } else {
                throw ModelError.unsupportedRefit(layer: nil, refit: "\(refit)", requirement: "no new parameter it cannot initialise (\(e.name))")
            }
        }
        let m = try CausalLM(config: c, parameters: p, frozen: frozen, storage: storage, matmul: matmul)
        m.lora = nil
        return m
    }

    /// The next-token loss (nats) of positions `from ..< T − 1` of one sequence `tokens` (the
    /// others get NaN): the layers once, then the LM head and the cross-entropy `rows` rows at a
    /// time, so a long sequence over a large vocabulary never holds `[T, V]` logits.
    public func sequenceLosses(_ tokens: [Int32], from first: Int = 0, rows block: Int = 256, threads: Int? = nil) throws -> [Float] {
        let T = tokens.count
        try checkTokens(tokens, batch: 1, length: T)
        try requireOption(first >= 0, "first scored position", first, ">= 0")
        let c = config, (D, V) = (c.hiddenSize, c.vocabSize)
        let threads = threads ?? Parallel.defaultThreads
        var x = try embed(tokens)
        let pass = ForwardPass(batch: 1, length: T, tokens: tokens, logits: try Tensor(zeros: [1]))
        for layer in 0..<c.layers {
            _ = try decoderLayer(layer, x: &x, batch: 1, length: T, firstPosition: 0, keep: false, pass: pass, threads: threads) { q, k, v in
                try attend(layer: layer, q: q, k: k, v: v, batch: 1, length: T, keep: false, threads: threads)
            }
        }
        var losses = [Float](repeating: .nan, count: T)
        let rows = max(1, block)
        var hF = try Tensor(uninitialized: [rows, D]), z = try Tensor(uninitialized: [rows, V])
        for r0 in stride(from: first, to: T - 1, by: rows) {
            let n = min(rows, T - 1 - r0)
            norm("model.norm.weight", x.unsafeBaseAddress + r0 * D, hF.unsafeMutableBaseAddress(), rstd: nil, rows: n, width: D)
            projectWeight(hF.unsafeBaseAddress, headName, z.unsafeMutableBaseAddress(), rows: n, in: D, out: V, threads: threads)
            let zp = z.unsafeMutableBaseAddress()
            for i in 0..<n {
                var target = tokens[r0 + i + 1]
                losses[r0 + i] = Float(ak_cross_entropy_rows(zp + i * V, V, 1, V, &target, 0, 0))
            }
        }
        return losses
    }

    /// The greedy prediction at each of `positions` of one sequence (the argmax of the logits
    /// there): teacher-forced greedy decoding, one forward pass.
    public func greedyPredictions(_ tokens: [Int32], positions: [Int], threads: Int? = nil) throws -> [Int32] {
        let pass = try forward(tokens: tokens, batch: 1, length: tokens.count, threads: threads, logitRows: positions)
        let V = config.vocabSize, z = pass.logits.unsafeBaseAddress
        return positions.indices.map { r in
            var best = 0
            for v in 1..<V where z[r * V + v] > z[r * V + best] { best = v }
            return Int32(best)
        }
    }
}
