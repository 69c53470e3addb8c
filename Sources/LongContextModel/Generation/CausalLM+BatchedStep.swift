import AttentionTensor
import Foundation
import LongAttention

extension CausalLM {
    /// The most sequences one ``step(tokens:caches:threads:)`` takes: the quantised kernels' row
    /// limit (``WeightMatrix/fastRowLimit``, 16), below which every product is computed row by row.
    public static let maxDecodeBatch = WeightMatrix.fastRowLimit

    /// One decoding step for `S` independent sequences (`1 ≤ S ≤` ``maxDecodeBatch``): token
    /// `tokens[s]` is appended to `caches[s]` at that cache's next position, and the result is
    /// the logits `[S, V]`, row `s` for sequence `s`.
    ///
    /// The per-token parts (norms, projections, MLP, LM head) run on the `S` rows together, so each
    /// weight block is read once per step for all of them; attention runs per sequence against its
    /// own cache. Every row is **bitwise** the logits that ``step(_:cache:threads:)`` returns for
    /// that sequence alone (batch-invariant): products of up to 16 rows are computed row by row
    /// (GEMV on a panel, or the quantised kernels, which are batch-invariant by construction), and
    /// the elementwise kernels run per row. So a sequence's text never depends on what it was
    /// batched with. A RoPE scaling whose table depends on the length (dynamic NTK) and attention
    /// sinks step the sequences one at a time (the same results).
    ///
    /// - Throws: ``ModelError/invalidOption(name:value:expected:)`` for a count mismatch or an empty or
    ///   oversized batch, ``ModelError/unsupportedModel(operation:requirement:)`` for a model that does not decode through a KV cache; a token outside the vocabulary;
    ///   the caches' errors (a full cache, a cache of another shape).
    public func step(tokens: [Int32], caches: inout [KVCache], threads: Int? = nil) throws -> Tensor {
        let c = config
        let S = tokens.count, (D, V, H, Hkv, hd) = (c.hiddenSize, c.vocabSize, c.heads, c.kvHeads, c.headDim)
        try requireOption(S >= 1 && S <= Self.maxDecodeBatch, "sequences", S, "in 1...\(Self.maxDecodeBatch) (a batched decoding step)")
        try requireOption(caches.count == S, "caches", caches.count, "\(S), one per token")
        guard decodesWithCache else {
            throw ModelError.unsupportedModel(operation: "a batched decoding step", requirement: "layers that all decode through a KV cache")
        }
        try checkTokens(tokens, batch: S, length: 1)
        for (s, cache) in caches.enumerated() {
            guard cache.layers == c.layers, cache.batch == 1, cache.kvHeads == Hkv, cache.headDimension == hd else {
                throw ModelError.layoutMismatch(what: "cache \(s)", found: "[layers \(cache.layers), B \(cache.batch), Hkv \(cache.kvHeads), d \(cache.headDimension)]",
                                                expected: "[layers \(c.layers), B 1, Hkv \(Hkv), d \(hd)]")
            }
        }
        let threads = threads ?? Parallel.defaultThreads
        var logits = try Tensor(uninitialized: [S, V])
        // Length-dependent RoPE tables and attention sinks (StreamingLLM's re-rotated queries) step
        // the sequences one at a time.
        if (rope?.scaling.dependsOnLength ?? false) || (slidingRope?.scaling.dependsOnLength ?? false)
            || (0..<c.layers).contains(where: { c.sinks(of: $0) > 0 }) {
            let lp = logits.unsafeMutableBaseAddress()
            for s in 0..<S {
                let row = try step([tokens[s]], cache: &caches[s], threads: threads, logits: true)
                (lp + s * V).update(from: row, count: V)
            }
            return logits
        }
        let positions = caches.map { $0.lengths[0] }
        var x = try embed(tokens)
        let pass = ForwardPass(batch: S, length: 1, tokens: tokens, logits: try Tensor(zeros: [1]))
        for layer in 0..<c.layers {
            _ = try decoderLayer(layer, x: &x, batch: S, length: 1, firstPosition: 0, rowPositions: positions, keep: false,
                                 pass: pass, threads: threads) { q, k, v in
                var out = try Tensor(uninitialized: [S, H * hd])
                let op = out.unsafeMutableBaseAddress()
                let q4 = try q.reshaped([S, 1, H, hd]).permuted([0, 2, 1, 3])
                let k4 = try k.reshaped([S, 1, Hkv, hd]).permuted([0, 2, 1, 3])
                let v4 = try v.reshaped([S, 1, Hkv, hd]).permuted([0, 2, 1, 3])
                for s in 0..<S {
                    // The same calls as a one-sequence step: its row of q, k, v as [1, heads, 1, hd] views.
                    try caches[s].append(layer: layer, keys: try k4.batches(s..<(s + 1)), values: try v4.batches(s..<(s + 1)))
                    let attentionThreads = Self.attentionThreads(positions: caches[s].positions(layer: layer).count, rows: 1, threads: threads)
                    let o = try decodeAttention(queries: try q4.batches(s..<(s + 1)), cache: caches[s], layer: layer,
                                                scale: attentionScale, alibi: attentionMask(layer: layer).alibi,
                                                slidingWindow: config.window(of: layer), outputLayout: .tokenMajor,
                                                threads: attentionThreads)
                    o.withUnsafePointer { (op + s * H * hd).update(from: $0, count: H * hd) }
                }
                return (out, .none)
            }
        }
        var hF = try Tensor(uninitialized: [S, D])
        norm("model.norm.weight", x.unsafeBaseAddress, hF.unsafeMutableBaseAddress(), rstd: nil, rows: S, width: D)
        projectWeight(hF.unsafeBaseAddress, headName, logits.unsafeMutableBaseAddress(), rows: S, in: D, out: V, threads: threads)
        return logits
    }
}
