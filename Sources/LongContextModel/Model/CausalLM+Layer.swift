import AttentionTensor
import CAttentionKernels
import Foundation
import LongAttention

/// The decoder layer, once, for every family and for both callers: the forward pass over whole
/// sequences (training, evaluation, prefill) and the decoding step against a KV cache. Families
/// differ only in the named pieces of ``ModelConfig`` (biases, q/k norms, sandwich norms, the
/// gate's activation, positions, windows), each a branch below, not a copy of the loop.
extension CausalLM {
    /// Names of a layer's norms: before attention, after it (sandwich only), before the MLP, after it.
    func normNames(_ layer: Int) -> (preAttention: String, postAttention: String?, preMLP: String, postMLP: String?) {
        let p = "model.layers.\(layer)."
        if config.sandwichNorms {
            return (p + "input_layernorm.weight", p + "post_attention_layernorm.weight", p + "pre_feedforward_layernorm.weight",
                    p + "post_feedforward_layernorm.weight")
        }
        return (p + "input_layernorm.weight", nil, p + "post_attention_layernorm.weight", nil)
    }

    /// Calls `body` with the RMSNorm weight `name` as the kernel multiplies by it: the stored
    /// weight, or `1 + w` for Gemma's Hugging Face checkpoints (``ModelConfig/normWeightOffset``).
    func withNormWeight<R>(_ name: String, _ body: (UnsafePointer<Float>) throws -> R) rethrows -> R {
        let w = parameters.pointer(name)
        let offset = config.normWeightOffset
        if offset == 0 { return try body(w) }
        let n = parameters.entry(name)!.count
        return try withUnsafeTemporaryAllocation(of: Float.self, capacity: n) { buf in
            for i in 0..<n { buf[i] = w[i] + offset }
            return try body(buf.baseAddress!)
        }
    }

    /// `y = RMSNorm(x) ∘ weight(name)` over `rows` rows of `width`, each row's scale into `rstd`.
    func norm(_ name: String, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>?,
              rows: Int, width: Int) {
        withNormWeight(name) { w in rmsNorm(x, w, y, rstd: rstd, rows: rows, width: width, eps: Float(config.rmsNormEps)) }
    }

    /// The RoPE table of `layer` (sliding layers may have their own base), or nil without RoPE.
    func ropeCache(layer: Int) -> RopeCache? { config.isSliding(layer) ? (slidingRope ?? rope) : rope }

    /// Rotates rows of `x [B·T, heads·hd]` in place: positions `firstPosition ..< firstPosition + T`
    /// within each sequence (`inverse`: the backward's rotation by the negated angles).
    func applyRoPE(_ x: UnsafeMutablePointer<Float>, layer: Int, batch B: Int, length T: Int, heads: Int, firstPosition: Int = 0,
                   inverse: Bool = false) throws {
        guard let rope = ropeCache(layer: layer) else { return }
        let table = try rope.embedding(positions: firstPosition + T)
        let hd = config.headDim, ld = heads * hd
        for b in 0..<B {
            for h in 0..<heads {
                try table.rotate(x + b * T * ld + h * hd, rows: T, stride: ld, firstPosition: firstPosition, inverse: inverse)
            }
        }
    }

    /// Rotates rows of `x [rows, heads·hd]` in place, row `r` at position `rowPositions[r]` (a
    /// decoding step over several sequences, each at its own length). The table is one built for
    /// every row (a length-dependent scaling is not handled here: its table depends on each row's length).
    func applyRoPE(_ x: UnsafeMutablePointer<Float>, layer: Int, heads: Int, rowPositions: [Int]) throws {
        guard let rope = ropeCache(layer: layer), let last = rowPositions.max() else { return }
        precondition(!rope.scaling.dependsOnLength, "per-row positions with a length-dependent RoPE scaling")
        let table = try rope.embedding(positions: last + 1)
        let hd = config.headDim, ld = heads * hd
        for (r, p) in rowPositions.enumerated() {
            for h in 0..<heads { try table.rotate(x + r * ld + h * hd, rows: 1, stride: ld, firstPosition: p) }
        }
    }

    /// The attention mask of `layer`: causal, with ALiBi slopes for an ALiBi model and the window
    /// on sliding layers.
    func attentionMask(layer: Int) -> AttentionMask {
        var mask = AttentionMask.causal
        if case .alibi = config.positions { mask.alibi = ALiBi(heads: config.heads) }
        mask.slidingWindow = config.window(of: layer)
        return mask
    }

    /// Scores are `scale · q·k`: the family's scale, or nil for `1/√hd`.
    var attentionScale: Float? { config.attentionScale.map { Float($0) } }

    /// The embedding rows of `tokens`: `[tokens.count, D]` (times the family's embedding scale).
    func embed(_ tokens: [Int32]) throws -> Tensor {
        let D = config.hiddenSize, emb = matrix("model.embed_tokens.weight")
        var x = try Tensor(uninitialized: [tokens.count, D])
        let xp = x.unsafeMutableBaseAddress()
        for (n, t) in tokens.enumerated() { emb.row(Int(t), columns: D, into: xp + n * D) }
        if let s = config.embeddingScale {
            for i in 0..<(tokens.count * D) { xp[i] *= s }
        }
        return x
    }

    /// `y [rows, width] += bias` row by row.
    func addBias(_ name: String, _ y: UnsafeMutablePointer<Float>, rows: Int, width: Int) {
        let b = parameters.pointer(name)
        for r in 0..<rows {
            let yr = y + r * width
            for i in 0..<width { yr[i] += b[i] }
        }
    }

    /// One decoder layer on the stream `x [B·T, D]`, updated in place, for positions
    /// `firstPosition ..< firstPosition + T` of each sequence:
    ///
    ///     h  = RMSNorm(x);  q, k, v = h·Wqᵀ (+bq), h·Wkᵀ (+bk), h·Wvᵀ (+bv)
    ///     q, k = RMSNorm per head (Qwen3, Gemma 3);  q, k = RoPE(q), RoPE(k)
    ///     a  = attention(q, k, v)·Woᵀ;  x += a, or x += RMSNorm(a) with sandwich norms
    ///     h2 = RMSNorm(x);  m = MLP(h2) (SwiGLU, GeGLU or experts);  x += m, or x += RMSNorm(m)
    ///
    /// `attention` maps q `[N, H·hd]`, k and v `[N, Hkv·hd]` (token-major rows) to the output rows
    /// `[N, H·hd]`: the forward pass runs the layer's variant over the sequences, a decoding step
    /// reads and extends its KV cache. With `keep`, what the backward needs is returned.
    ///
    /// `segments` (one sequence only), when given, says the `N` rows are runs of positions (a
    /// sequence-parallel shard: rows of several chunks), RoPE rotating each run from its own first
    /// position; `rowPositions`, when given, puts row `r` at position `rowPositions[r]` (a batched
    /// decoding step, `T` = 1, each sequence at its own length); `projections` replaces the
    /// products with the layer's weight matrices (a tensor-parallel caller splits their output rows
    /// across processes); nil: ``project``.
    func decoderLayer(_ layer: Int, x: inout Tensor, batch B: Int, length T: Int, firstPosition: Int, rowPositions: [Int]? = nil,
                      keep: Bool, pass: ForwardPass, threads: Int, segments: [Range<Int>]? = nil, projections: ProjectionGroup? = nil,
                      attention: (_ q: Tensor, _ k: Tensor, _ v: Tensor) throws -> (rows: Tensor, state: AttentionState))
        throws -> LayerActivations? {
        let c = config, pre = "model.layers.\(layer)."
        let projectGroup = projections ?? defaultProjections(threads: threads)
        let (N, D, H, Hkv, hd) = (B * T, c.hiddenSize, c.heads, c.kvHeads, c.headDim)
        let names = normNames(layer)
        // The stream entering the layer and after attention are kept only for the backward (a kept
        // reference makes the in-place updates below copy).
        let xIn: Tensor? = keep ? x : nil
        // Attention block.
        var h1 = try Tensor(uninitialized: [N, D])
        var rstd1 = [Float](repeating: 0, count: keep ? N : 0)
        rstd1.withUnsafeMutableBufferPointer { r in
            norm(names.preAttention, x.unsafeBaseAddress, h1.unsafeMutableBaseAddress(), rstd: keep ? r.baseAddress : nil, rows: N, width: D)
        }
        var q = try Tensor(uninitialized: [N, H * hd]), k = try Tensor(uninitialized: [N, Hkv * hd])
        var v = try Tensor(uninitialized: [N, Hkv * hd])
        let qkv = [("q_proj", q.unsafeMutableBaseAddress(), H * hd), ("k_proj", k.unsafeMutableBaseAddress(), Hkv * hd),
                   ("v_proj", v.unsafeMutableBaseAddress(), Hkv * hd)]
        try projectGroup(h1.unsafeBaseAddress, N, D, qkv.map { ProjectionOutput(weight: pre + "self_attn.\($0.0).weight", output: $0.1, width: $0.2) },
                         false)
        if c.qkvBias {
            for (name, out, width) in qkv { addBias(pre + "self_attn.\(name).bias", out, rows: N, width: width) }
        }
        var qkNorm: (q: Tensor, k: Tensor, rstdQ: [Float], rstdK: [Float])? = nil
        if c.queryKeyNorm {
            // In place (the kernel reads each row before writing it); the backward keeps the inputs.
            let rawQ = keep ? q.copy() : nil, rawK = keep ? k.copy() : nil
            var rq = [Float](repeating: 0, count: keep ? N * H : 0), rk = [Float](repeating: 0, count: keep ? N * Hkv : 0)
            let qp = q.unsafeMutableBaseAddress(), kp = k.unsafeMutableBaseAddress()
            rq.withUnsafeMutableBufferPointer { r in
                norm(pre + "self_attn.q_norm.weight", qp, qp, rstd: keep ? r.baseAddress : nil, rows: N * H, width: hd)
            }
            rk.withUnsafeMutableBufferPointer { r in
                norm(pre + "self_attn.k_norm.weight", kp, kp, rstd: keep ? r.baseAddress : nil, rows: N * Hkv, width: hd)
            }
            if keep { qkNorm = (rawQ!, rawK!, rq, rk) }
        }
        if let rowPositions {
            try applyRoPE(q.unsafeMutableBaseAddress(), layer: layer, heads: H, rowPositions: rowPositions)
            try applyRoPE(k.unsafeMutableBaseAddress(), layer: layer, heads: Hkv, rowPositions: rowPositions)
        } else if let segments {
            precondition(B == 1 && segments.reduce(0) { $0 + $1.count } == N, "segments must cover the rows of one sequence")
            var row = 0
            for s in segments where !s.isEmpty {
                try applyRoPE(q.unsafeMutableBaseAddress() + row * H * hd, layer: layer, batch: 1, length: s.count, heads: H,
                              firstPosition: s.lowerBound)
                try applyRoPE(k.unsafeMutableBaseAddress() + row * Hkv * hd, layer: layer, batch: 1, length: s.count, heads: Hkv,
                              firstPosition: s.lowerBound)
                row += s.count
            }
        } else {
            try applyRoPE(q.unsafeMutableBaseAddress(), layer: layer, batch: B, length: T, heads: H, firstPosition: firstPosition)
            try applyRoPE(k.unsafeMutableBaseAddress(), layer: layer, batch: B, length: T, heads: Hkv, firstPosition: firstPosition)
        }
        let (attCat, state) = try attention(q, k, v)
        var postAttention: (a: Tensor, rstd: [Float])? = nil
        if let post = names.postAttention {
            var a = try Tensor(uninitialized: [N, D]), n = try Tensor(uninitialized: [N, D])
            try projectGroup(attCat.unsafeBaseAddress, N, H * hd,
                             [ProjectionOutput(weight: pre + "self_attn.o_proj.weight", output: a.unsafeMutableBaseAddress(), width: D)], false)
            var r = [Float](repeating: 0, count: N)
            norm(post, a.unsafeBaseAddress, n.unsafeMutableBaseAddress(), rstd: &r, rows: N, width: D)
            let xp = x.unsafeMutableBaseAddress(), np = n.unsafeBaseAddress
            for i in 0..<(N * D) { xp[i] += np[i] }
            if keep { postAttention = (a, r) }
        } else {
            try projectGroup(attCat.unsafeBaseAddress, N, H * hd,
                             [ProjectionOutput(weight: pre + "self_attn.o_proj.weight", output: x.unsafeMutableBaseAddress(), width: D)], true)
        }
        // MLP block.
        let xMid: Tensor? = keep ? x : nil
        var h2 = try Tensor(uninitialized: [N, D])
        var rstd2 = [Float](repeating: 0, count: keep ? N : 0)
        rstd2.withUnsafeMutableBufferPointer { r in
            norm(names.preMLP, x.unsafeBaseAddress, h2.unsafeMutableBaseAddress(), rstd: keep ? r.baseAddress : nil, rows: N, width: D)
        }
        var postMLP: (m: Tensor, rstd: [Float])? = nil
        let mlp: MLPActivations
        if let post = names.postMLP {
            var m = try Tensor(zeros: [N, D]), n = try Tensor(uninitialized: [N, D])
            mlp = try mlpForward(layer: layer, h: h2, into: &m, rows: N, keep: keep, pass: pass, threads: threads, projections: projections)
            var r = [Float](repeating: 0, count: N)
            norm(post, m.unsafeBaseAddress, n.unsafeMutableBaseAddress(), rstd: &r, rows: N, width: D)
            let xp = x.unsafeMutableBaseAddress(), np = n.unsafeBaseAddress
            for i in 0..<(N * D) { xp[i] += np[i] }
            if keep { postMLP = (m, r) }
        } else {
            mlp = try mlpForward(layer: layer, h: h2, into: &x, rows: N, keep: keep, pass: pass, threads: threads, projections: projections)
        }
        guard keep else { return nil }
        let a = LayerActivations(xIn: xIn!, h1: h1, rstd1: rstd1, q: q, k: k, v: v, attention: state, attCat: attCat,
                                 xMid: xMid!, h2: h2, rstd2: rstd2, mlp: mlp)
        a.qkNorm = qkNorm
        a.postAttention = postAttention
        a.postMLP = postMLP
        return a
    }

    /// The forward pass over `tokens` (`[B, T]` row-major ids). With `keepForBackward`, every
    /// activation the backward needs is kept in the result. `logitRows`, when given, limits the LM
    /// head to those rows of `[B·T]` (the logits tensor is then `[rows.count, V]`): perplexity
    /// and prefill need a few rows of a 262K-token vocabulary, not all of them.
    public func forward(tokens: [Int32], batch B: Int, length T: Int, keepForBackward: Bool = false,
                        threads: Int? = nil, logitRows: [Int]? = nil) throws -> ForwardPass {
        try checkTokens(tokens, batch: B, length: T)
        let c = config
        let (N, D, V) = (B * T, c.hiddenSize, c.vocabSize)
        let threads = threads ?? Parallel.defaultThreads
        if let rows = logitRows {
            try requireOption(!keepForBackward, "logitRows", rows.count, "nil when keeping the forward for a backward")
            if let bad = rows.first(where: { !(0..<N).contains($0) }) {
                throw ModelError.invalidOption(name: "logitRows", value: "\(bad)", expected: "rows in 0..<\(N)")
            }
        }
        var x = try embed(tokens)
        let pass = ForwardPass(batch: B, length: T, tokens: tokens,
                               logits: try Tensor(uninitialized: logitRows.map { [$0.count, V] } ?? [B, T, V]))
        for layer in 0..<c.layers {
            let a = try decoderLayer(layer, x: &x, batch: B, length: T, firstPosition: 0, keep: keepForBackward, pass: pass,
                                     threads: threads) { q, k, v in
                try attend(layer: layer, q: q, k: k, v: v, batch: B, length: T, keep: keepForBackward, threads: threads)
            }
            if let a { pass.layers.append(a) }
        }
        // Final norm and LM head.
        if let rows = logitRows {
            var picked = try Tensor(uninitialized: [rows.count, D]), hF = try Tensor(uninitialized: [rows.count, D])
            let xp = x.unsafeBaseAddress, pp = picked.unsafeMutableBaseAddress()
            for (i, r) in rows.enumerated() { (pp + i * D).update(from: xp + r * D, count: D) }
            norm("model.norm.weight", picked.unsafeBaseAddress, hF.unsafeMutableBaseAddress(), rstd: nil, rows: rows.count, width: D)
            projectWeight(hF.unsafeBaseAddress, headName, pass.logits.unsafeMutableBaseAddress(), rows: rows.count, in: D, out: V,
                          threads: threads)
            return pass
        }
        var hF = try Tensor(uninitialized: [N, D]), rstdF = [Float](repeating: 0, count: N)
        norm("model.norm.weight", x.unsafeBaseAddress, hF.unsafeMutableBaseAddress(), rstd: &rstdF, rows: N, width: D)
        projectWeight(hF.unsafeBaseAddress, headName, pass.logits.unsafeMutableBaseAddress(), rows: N, in: D, out: V, threads: threads)
        if keepForBackward {
            pass.xOut = x
            pass.hF = hF
            pass.rstdF = rstdF
        }
        return pass
    }

    /// One layer's attention on rows `q [N, H·hd]`, `k`, `v [N, Hkv·hd]` read as `[B, heads, T, hd]`
    /// views through their strides: returns the output rows `[N, H·hd]` and the state its backward
    /// needs. Exact attention writes its output token-major in place; the other variants' outputs
    /// `[B, H, T, hd]` are permuted into rows.
    func attend(layer: Int, q: Tensor, k: Tensor, v: Tensor, batch B: Int, length T: Int, keep: Bool,
                threads: Int) throws -> (rows: Tensor, state: AttentionState) {
        let c = config, (H, Hkv, hd) = (c.heads, c.kvHeads, c.headDim), N = B * T
        let qv = try q.reshaped([B, T, H, hd]).permuted([0, 2, 1, 3])
        let kv = try k.reshaped([B, T, Hkv, hd]).permuted([0, 2, 1, 3])
        let vv = try v.reshaped([B, T, Hkv, hd]).permuted([0, 2, 1, 3])
        let mask = attentionMask(layer: layer)
        func rows(_ headMajor: Tensor) throws -> Tensor { try headMajor.permuted([0, 2, 1, 3]).contiguous().reshaped([N, H * hd]) }
        switch c.attention[layer] {
        case .exact:
            if config.sinks(of: layer) > 0 {
                guard !keep else { throw ModelError.unsupportedModel(operation: "a backward", requirement: "no attention sinks (an inference option)") }
                return (try streamingAttention(layer: layer, q: q, k: k, v: v, batch: B, length: T, threads: threads), .none)
            }
            if !keep {
                let out = try scaledDotProductAttention(queries: qv, keys: kv, values: vv, scale: attentionScale, mask: mask,
                                                        outputLayout: .tokenMajor, threads: threads)
                return (try out.reshaped([N, H * hd]), .none)
            }
            let f = try scaledDotProductAttentionForward(queries: qv, keys: kv, values: vv, scale: attentionScale, mask: mask,
                                                         outputLayout: .tokenMajor, threads: threads)
            return (try f.output.reshaped([N, H * hd]), .softmax(f))
        case .bigbird:
            try requireDefaultScale("BigBird")
            let plan = try bigBirdPlan(layer: layer, length: T)
            let f = try bigBirdAttentionForward(queries: qv, keys: kv, values: vv, plan: plan, alibi: mask.alibi, threads: threads)
            return (try rows(f.output), keep ? .softmax(f) : .none)
        case .linear(let map):
            let f = try linearAttentionForward(queries: qv, keys: kv, values: vv, featureMap: map, causal: true, threads: threads)
            return (try rows(f.output), keep ? .linear(f) : .none)
        case .infini:
            try requireDefaultScale("Infini-Attention")
            let infini = try infiniAttention(layer: layer)
            return (try rows(try infini(queries: qv, keys: kv, values: vv, threads: threads)), keep ? .infini : .none)
        }
    }

    /// Variants whose kernels scale scores by 1/√hd only.
    func requireDefaultScale(_ variant: String) throws {
        if let s = config.attentionScale, abs(s * Double(config.headDim).squareRoot() - 1) > 1e-12 {
            throw ModelError.unsupportedRefit(layer: nil, refit: "\(variant) attention", requirement: "scores scaled by 1/√head_dim, not \(s)")
        }
    }

    func bigBirdPlan(layer: Int, length T: Int) throws -> BigBirdPlan {
        guard case .bigbird(let b, let w, let r, let seed) = config.attention[layer] else { preconditionFailure("not a BigBird layer") }
        return try BigBirdPlan(sequenceLength: T, heads: config.heads, blockSize: b, globalBlocks: 1, windowBlocks: w,
                               randomBlocks: r, seed: seed &+ UInt64(layer), causal: true)
    }

    func infiniAttention(layer: Int) throws -> InfiniAttention {
        guard case .infini(let segment, let update) = config.attention[layer] else { preconditionFailure("not an Infini layer") }
        let beta = Array(UnsafeBufferPointer(start: parameters.pointer("model.layers.\(layer).self_attn.infini_beta"),
                                             count: config.heads))
        return try InfiniAttention(segmentLength: segment, update: update, beta: beta)
    }

    /// The MLP of `layer` on normalised rows `h [N, D]`, added into `x`.
    func mlpForward(layer: Int, h: Tensor, into x: inout Tensor, rows N: Int, keep: Bool, pass: ForwardPass,
                    threads: Int, projections: ProjectionGroup? = nil) throws -> MLPActivations {
        let c = config, D = c.hiddenSize, pre = "model.layers.\(layer)."
        if c.architecture == .mixtral {
            guard projections == nil else { throw ModelError.unsupportedModel(operation: "a projection hook", requirement: "dense MLPs, not mixture-of-experts layers") }
            return try mixtureForward(layer: layer, h: h, into: &x, rows: N, keep: keep, pass: pass, threads: threads)
        }
        let projectGroup = projections ?? defaultProjections(threads: threads)
        let F = c.intermediateSize
        var g = try Tensor(uninitialized: [N, F]), u = try Tensor(uninitialized: [N, F]), m = try Tensor(uninitialized: [N, F])
        try projectGroup(h.unsafeBaseAddress, N, D, [ProjectionOutput(weight: pre + "mlp.gate_proj.weight", output: g.unsafeMutableBaseAddress(), width: F),
                                                     ProjectionOutput(weight: pre + "mlp.up_proj.weight", output: u.unsafeMutableBaseAddress(), width: F)],
                         false)
        // Row by row: the kernels' vector body and scalar tail round differently, so a row's
        // result must not depend on where it starts in the batch (batch-invariant decoding).
        let gp = g.unsafeBaseAddress, up = u.unsafeBaseAddress, mp = m.unsafeMutableBaseAddress()
        for r in 0..<N {
            switch c.activation {
            case .silu: ak_swiglu(gp + r * F, up + r * F, mp + r * F, F)
            case .geluTanh: ak_geglu_tanh(gp + r * F, up + r * F, mp + r * F, F)
            }
        }
        try projectGroup(m.unsafeBaseAddress, N, F,
                         [ProjectionOutput(weight: pre + "mlp.down_proj.weight", output: x.unsafeMutableBaseAddress(), width: D)], true)
        return keep ? .dense(g: g, u: u, m: m) : .none
    }
}
