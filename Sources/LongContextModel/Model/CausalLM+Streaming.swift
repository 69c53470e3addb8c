import AttentionTensor
import Foundation
import LongAttention

/// StreamingLLM (Xiao et al. 2023): attention sinks + a sliding window on the full layers.
///
/// The mask: query `i` sees keys `j < S` (the sinks) and `i − W < j ≤ i` (the window). Decoding
/// keeps exactly those keys in the ``LongAttention/KVCache`` (the window's ring plus the sink
/// store), so memory is bounded by `S + W` positions per layer (`S + W + maxAppend − 1` while a
/// prompt is appended in chunks).
///
/// **Positions: by slot in the cache, as StreamingLLM assigns them.** Once the cache is full
/// (`i ≥ S + W − 1`) the sinks take positions `0 ..< S`, the window's keys `S ..< S + W` and the
/// query `S + W − 1`, so no relative distance exceeds `S + W − 1`, however long the sequence; this
/// is what keeps the perplexity flat past the trained context (keeping original positions would
/// put sinks at distance `i`, beyond anything the model saw). RoPE scores depend only on the
/// difference of the two positions, so this is computed without re-rotating any stored key: the
/// cache keeps keys rotated at their original positions (a window key's distance to the query is
/// `i − j` under both rules), and for the sinks the query alone is rotated back by
/// `shift = max(0, i − (S + W − 1))`, to `min(i, S + W − 1)`, which puts every sink `s` at the slot
/// distance `min(i, S + W − 1) − s`. The window's attention (output and log-sum-exp) and the sinks'
/// few scores are then merged by the (max, sum, output) rule. Until the cache fills, every key is
/// in the window or the sinks and positions are the original ones.
extension CausalLM {
    /// The sinks of `layer` that query position `p` sees outside its window: `j < min(S, p − W + 1)`.
    static func sinksOutsideWindow(position p: Int, sinks S: Int, window W: Int) -> Int { min(S, max(0, p - W + 1)) }

    /// Merges the sinks into a window's attention output, in place. `out`: token-major rows
    /// `[B·n, H·hd]` (the window's normalised output), `lse`: `[B, H, n]` (its log-sum-exp of scaled
    /// scores); `q`: the queries `[B·n, H·hd]` rotated at their original positions `p0 ..< p0 + n`
    /// (re-rotated here, on a copy, to the sinks' slot distance); `sinkKey(b, g, j)` /
    /// `sinkValue(b, g, j)`: the sink rows (rotated at their positions `j`).
    func mergeSinks(layer: Int, out: UnsafeMutablePointer<Float>, lse: UnsafePointer<Float>, q: Tensor, batch B: Int, length n: Int,
                    firstPosition p0: Int, sinkKey: (Int, Int, Int) -> UnsafePointer<Float>,
                    sinkValue: (Int, Int, Int) -> UnsafePointer<Float>) throws {
        guard let st = config.streaming, st.sinks > 0 else { return }
        let (S, W) = (st.sinks, st.window)
        let (H, Hkv, hd) = (config.heads, config.kvHeads, config.headDim), ld = H * hd, group = H / Hkv
        // Rows whose queries see sinks outside their window.
        let firstRow = max(0, W - p0)
        guard firstRow < n else { return }
        var qs = q.contiguous()
        let qp = qs.unsafeMutableBaseAddress()
        // Rotate back by the shift (rows from position S + W on have shift ≥ 1, consecutive).
        let shiftedRow = max(firstRow, S + W - p0)
        if shiftedRow < n, let rope = ropeCache(layer: layer) {
            let table = try rope.embedding(positions: p0 + n)
            let firstShift = p0 + shiftedRow - (S + W - 1)
            for b in 0..<B {
                for h in 0..<H {
                    try table.rotate(qp + (b * n + shiftedRow) * ld + h * hd, rows: n - shiftedRow, stride: ld,
                                     firstPosition: firstShift, inverse: true)
                }
            }
            // A table scaled by an attention factor (YaRN) scaled the rows once more: undo that.
            let factor = Float(try RotaryEmbedding.frequencies(dimension: hd, base: rope.theta, scaling: rope.scaling.rotary(rope.maxPositionEmbeddings),
                                                               maxPositions: p0 + n).attentionFactor)
            if factor != 1 {
                for b in 0..<B { for r in shiftedRow..<n { for i in 0..<ld { qp[(b * n + r) * ld + i] /= factor } } }
            }
        }
        let scale = attentionScale ?? 1 / Float(hd).squareRoot()
        var scores = [Float](repeating: 0, count: S)
        var acc = [Float](repeating: 0, count: hd)
        for b in 0..<B {
            for r in firstRow..<n {
                let visible = Self.sinksOutsideWindow(position: p0 + r, sinks: S, window: W)
                if visible == 0 { continue }
                for h in 0..<H {
                    let g = h / group, qr = qp + (b * n + r) * ld + h * hd, o = out + (b * n + r) * ld + h * hd
                    let lseW = lse[(b * H + h) * n + r]
                    var m = lseW
                    for j in 0..<visible {
                        let k = sinkKey(b, g, j)
                        var s: Float = 0
                        for i in 0..<hd { s += qr[i] * k[i] }
                        scores[j] = s * scale
                        m = max(m, scores[j])
                    }
                    let wW: Float = lseW == -.infinity ? 0 : Foundation.exp(lseW - m)
                    var total = wW
                    for i in 0..<hd { acc[i] = o[i] * wW }
                    for j in 0..<visible {
                        let e = Foundation.exp(scores[j] - m), v = sinkValue(b, g, j)
                        total += e
                        for i in 0..<hd { acc[i] += e * v[i] }
                    }
                    for i in 0..<hd { o[i] = acc[i] / total }
                }
            }
        }
    }

    /// The forward pass's attention of a streaming layer: the window (exact, banded) with its
    /// log-sum-exp, then the sinks merged in. `q, k, v`: token-major rows of `B` sequences of `T`.
    func streamingAttention(layer: Int, q: Tensor, k: Tensor, v: Tensor, batch B: Int, length T: Int, threads: Int) throws -> Tensor {
        let c = config, (H, Hkv, hd) = (c.heads, c.kvHeads, c.headDim), N = B * T
        let qv = try q.reshaped([B, T, H, hd]).permuted([0, 2, 1, 3])
        let kv = try k.reshaped([B, T, Hkv, hd]).permuted([0, 2, 1, 3])
        let vv = try v.reshaped([B, T, Hkv, hd]).permuted([0, 2, 1, 3])
        let f = try scaledDotProductAttentionForward(queries: qv, keys: kv, values: vv, scale: attentionScale, mask: attentionMask(layer: layer),
                                                     outputLayout: .tokenMajor, threads: threads)
        var out = try f.output.reshaped([N, H * hd]).contiguous()
        let lse = f.logSumExp.contiguous()
        let kc = k.contiguous(), vc = v.contiguous()
        let kp = kc.unsafeBaseAddress, vp = vc.unsafeBaseAddress, kld = Hkv * hd
        try mergeSinks(layer: layer, out: out.unsafeMutableBaseAddress(), lse: lse.unsafeBaseAddress, q: q, batch: B, length: T, firstPosition: 0,
                       sinkKey: { b, g, j in kp + (b * T + j) * kld + g * hd }, sinkValue: { b, g, j in vp + (b * T + j) * kld + g * hd })
        return out
    }

    /// A decoding step's attention of a streaming layer against `cache` (which holds this step's
    /// keys and values): the ring's window with its log-sum-exp, then the cache's sinks merged in.
    func streamingDecodeAttention(layer: Int, q: Tensor, cache: KVCache, length n: Int, firstPosition p0: Int, threads: Int) throws -> Tensor {
        let c = config, (H, Hkv, hd) = (c.heads, c.kvHeads, c.headDim)
        let qh = try q.reshaped([1, n, H, hd]).permuted([0, 2, 1, 3])
        let f = try decodeAttentionKeepingLSE(queries: qh, cache: cache, layer: layer, scale: attentionScale, threads: threads)
        var out = try f.headMajorOutput.permuted([0, 2, 1, 3]).contiguous().reshaped([n, H * hd])
        let lse = f.logSumExp.contiguous()
        let (sk, sv) = try cache.sinkRows(layer: layer)
        let kc = sk.contiguous(), vc = sv.contiguous(), s = sk.shape[2]
        let kp = kc.unsafeBaseAddress, vp = vc.unsafeBaseAddress
        _ = Hkv
        try mergeSinks(layer: layer, out: out.unsafeMutableBaseAddress(), lse: lse.unsafeBaseAddress, q: q, batch: 1, length: n, firstPosition: p0,
                       sinkKey: { _, g, j in kp + (g * s + j) * hd }, sinkValue: { _, g, j in vp + (g * s + j) * hd })
        return out
    }

    /// The same weights (shared, not copied) under `config`, which may differ from this model's in
    /// its positions (RoPE scaling) and ``ModelConfig/streaming`` only; an attached LoRA adapter stays attached.
    public func with(config newConfig: ModelConfig) throws -> CausalLM {
        var same = newConfig
        same.positions = config.positions
        same.slidingPositions = config.slidingPositions
        same.streaming = config.streaming
        same.maxPositionEmbeddings = config.maxPositionEmbeddings
        guard same == config else {
            throw ModelError.invalidOption(name: "config", value: "a config differing from the model's", expected: "the model's config, changed only in its positions and attention sinks")
        }
        let m = try CausalLM(config: newConfig, parameters: parameters, frozen: frozen, storage: storage, matmul: matmul)
        m.lora = lora
        return m
    }
}
