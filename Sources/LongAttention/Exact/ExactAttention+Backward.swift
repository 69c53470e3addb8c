import AttentionTensor
import CAttentionKernels

/// Exact attention's forward for training: the tiled (FlashAttention) forward that also keeps each
/// query row's log-sum-exp, what ``scaledDotProductAttentionBackward(queries:keys:values:forward:outputGradient:scale:mask:threads:)``
/// needs. Shapes and options as ``scaledDotProductAttention(queries:keys:values:scale:mask:implementation:threads:)``;
/// the output equals it to float32 rounding. Extra memory: `B·H·N` floats. A sliding window in
/// `mask` is honoured with the same tile skipping; `outputLayout: .tokenMajor` writes the output
/// as `[B, N, H, dv]` (the log-sum-exp stays `[B, H, N]`), and the backward reads it so.
public func scaledDotProductAttentionForward(
    queries: Tensor, keys: Tensor, values: Tensor, scale: Float? = nil, mask: AttentionMask = .none,
    outputLayout: AttentionOutputLayout = .headMajor, threads: Int? = nil
) throws -> SoftmaxAttentionForward {
    let inputs = try AttentionInputs(queries: queries, keys: keys, values: values, scale: scale, mask: mask, threads: threads)
    return try exactAttentionKeepingLSE(inputs, outputLayout: outputLayout)
}

/// Exact attention's backward, FlashAttention-2 style (Dao 2023, Algorithm 2): with the forward's
/// log-sum-exp the probabilities of each score tile are recomputed, `P = exp(S - lse)`, never
/// stored; then per tile
///
///     dV_j += Pᵀ dO_i      dP = dO_i V_jᵀ      dS = P ∘ (dP - D_i),  D_i = rowsum(dO_i ∘ O_i)
///     dK_j += scale · dSᵀ Q_i      dQ_i += scale · dS K_j
///
/// Shapes: `queries [B, H, N, d]`, `keys [B, Hkv, M, d]`, `values [B, Hkv, M, dv]`, `forward` from
/// ``scaledDotProductAttentionForward(queries:keys:values:scale:mask:outputLayout:threads:)`` with the same
/// inputs, scale and mask (its output in either layout), `outputGradient [B, H, N, dv]`. Every
/// input may be a strided view with a contiguous last axis, read in place: token-major rows
/// `[B·N, H·d]` as `reshaped([B, N, H, d]).permuted([0, 2, 1, 3])`, and a token-major `dOut` the
/// same way. Returns dq, dk, dv of the inputs' shapes, or with `gradientLayout: .tokenMajor`
/// `dq [B, N, H, d]`, `dk [B, M, Hkv, d]`, `dv [B, M, Hkv, dv]` (written in place, the layout of a
/// model's token-major gradient rows).
///
/// The query heads of a GQA group are stacked into each GEMM; a KV head's dK and dV sum over them
/// in the same GEMMs (no per-head copies of K or V). Causal tiles above the diagonal are skipped,
/// and under a sliding window (`mask.slidingWindow`) every tile outside the band too: O(N·W·d).
/// Work items own disjoint dK/dV rows (a whole KV head, or with few heads a private partial summed
/// afterwards in a fixed order), so threads never race and the result is bitwise the same for any
/// thread count. Workspace: a few `stacked rows × (d + key tile)` blocks per worker, independent of N and M.
public func scaledDotProductAttentionBackward(
    queries: Tensor, keys: Tensor, values: Tensor, forward: SoftmaxAttentionForward, outputGradient: Tensor,
    scale: Float? = nil, mask: AttentionMask = .none, gradientLayout: AttentionOutputLayout = .headMajor, threads: Int? = nil
) throws -> AttentionGradients {
    let inputs = try AttentionInputs(queries: queries, keys: keys, values: values, scale: scale, mask: mask, threads: threads)
    return try exactBackward(inputs, forward: forward, outputGradient: outputGradient, gradientLayout: gradientLayout)
}

/// Bytes of scratch the exact backward allocates for `shape` on `threads` workers (independent
/// of N and M; plus dK/dV partials when `B·Hkv` is below 4 and a group's heads are split).
public func attentionBackwardWorkspaceBytes(shape: AttentionShape, threads: Int) -> Int {
    let plan = AttentionBackwardPlan(shape: shape, threads: threads)
    let (floats, ints) = plan.workerScratch
    let partials = shape.B * shape.Hkv * (plan.parts - 1) * shape.M * (shape.d + shape.dv)
    return (floats + ints) * 4 * min(threads, max(1, plan.items)) + partials * 4
}

/// Tiled exact attention that also writes each row's log-sum-exp (query row 0 at key position
/// `queryOffset`, nil: bottom-right).
func exactAttentionKeepingLSE(_ inputs: AttentionInputs, queryOffset: Int? = nil,
                              outputLayout: AttentionOutputLayout = .headMajor,
                              plan given: ExactAttentionPlan? = nil) throws -> SoftmaxAttentionForward {
    try inputs.checkSoftmaxRange()
    let s = inputs.shape
    let plan = given ?? ExactAttentionPlan(shape: s, implementation: .tiled, threads: inputs.threads)
    var out = try inputs.makeOutput(outputLayout)
    // A zero-width output (dv = 0) keeps no statistics: its log-sum-exps are -inf and its
    // gradients zero (L = Σ out ⊙ dOut is identically 0).
    var lse = out.count > 0 ? try Tensor(uninitialized: [s.B, s.H, s.N]) : try Tensor(filling: -.infinity, [s.B, s.H, s.N])
    if out.count > 0 {
        try lse.withUnsafeMutableBufferPointer { lp in
            try inputs.withLayout(output: &out, queryOffset: queryOffset, outputLayout: outputLayout) { layout in
                var L = layout
                L.lse = lp.baseAddress
                if s.M == 0 {
                    L.out.initialize(repeating: 0, count: s.B * s.H * s.N * s.dv)
                    lp.initialize(repeating: -.infinity)
                } else {
                    try runTiled(L, plan: plan)
                }
            }
        }
    }
    return SoftmaxAttentionForward(output: out, logSumExp: lse, outputLayout: outputLayout)
}

/// The backward on accepted inputs (query row 0 at key position `queryOffset`, nil: bottom-right).
func exactBackward(_ inputs: AttentionInputs, forward: SoftmaxAttentionForward, outputGradient: Tensor,
                   queryOffset: Int? = nil, gradientLayout: AttentionOutputLayout = .headMajor) throws -> AttentionGradients {
    let back = try BackwardInputs(inputs, outputGradient: outputGradient, forward: forward)
    try inputs.checkSoftmaxRange()
    try back.checkSoftmaxRange(inputs)
    let s = inputs.shape
    let tokenMajor = gradientLayout == .tokenMajor
    var grads = AttentionGradients(queries: try Tensor(uninitialized: tokenMajor ? [s.B, s.N, s.H, s.d] : [s.B, s.H, s.N, s.d]),
                                   keys: try Tensor(uninitialized: tokenMajor ? [s.B, s.M, s.Hkv, s.d] : [s.B, s.Hkv, s.M, s.d]),
                                   values: try Tensor(uninitialized: tokenMajor ? [s.B, s.M, s.Hkv, s.dv] : [s.B, s.Hkv, s.M, s.dv]),
                                   beta: nil)
    if s.B * s.H * s.N == 0 || s.M == 0 || s.dv == 0 {
        for t in [\AttentionGradients.queries, \.keys, \.values] { grads[keyPath: t].withUnsafeMutableBufferPointer { $0.update(repeating: 0) } }
        return grads
    }
    let plan = AttentionBackwardPlan(shape: s, threads: inputs.threads)
    try withGradientLayout(inputs, back: back, forward: forward, grads: &grads, queryOffset: queryOffset) { L, G in
        var G = G
        if tokenMajor { G.tokenMajor = true }
        try runSoftmaxBackward(L, G, plan: plan)
    }
    return grads
}

/// How a softmax backward is cut into work. Items are (batch, KV head, head part); parts split a
/// group's query heads only when `B·Hkv` alone cannot occupy the cores (a function of the shape,
/// never the thread count, so the result does not depend on it).
struct AttentionBackwardPlan {
    let shape: AttentionShape
    /// Query positions per block, per head; the part's heads are stacked (`headsPerPart · queryBlock` rows).
    let queryBlock: Int
    /// Keys per tile (the causal triangle uses 64-key tiles).
    let keyTile: Int
    /// Parts per (batch, KV head), each owning `headsPerPart` query heads; parts after the first
    /// accumulate dK/dV in private buffers.
    let parts: Int
    let threads: Int

    var headsPerPart: Int { (shape.group + parts - 1) / parts }
    var stackedRows: Int { headsPerPart * queryBlock }
    var items: Int { shape.B * shape.Hkv * parts }

    /// About 512 stacked rows against 128-key tiles: the five GEMMs per tile then have 512-row
    /// operands and the S/dS and dP tiles (256 KiB each) fit in L2 with the packed Q and dO.
    /// Measured at N = 4K, H = 8, d = 64 on 2 cores of a Zen 3 EPYC: 842–849 ms against 901–953 ms
    /// for 128 × 256 and 939–1085 ms for 256 × 128; at 16K the two best were equal.
    init(shape: AttentionShape, threads: Int, queryBlock: Int? = nil, keyTile: Int? = nil) {
        self.shape = shape
        let sequences = shape.B * shape.Hkv
        parts = sequences >= 4 ? 1 : max(1, min(shape.group, (4 + sequences - 1) / sequences))
        let g = (shape.group + parts - 1) / parts
        self.queryBlock = max(1, queryBlock ?? min(max(1, shape.N), max(1, 512 / max(1, g))))
        self.keyTile = max(1, keyTile ?? min(128, max(1, shape.M)))
        self.threads = max(1, threads)
    }

    /// Floats and ints of one worker's scratch: packed Q and dO, the dQ accumulator, scores/dS and
    /// dP tiles, D and lse per row; column limits.
    var workerScratch: (floats: Int, ints: Int) {
        let r = stackedRows
        return (r * (2 * shape.d + shape.dv + 2 * keyTile + 2), 2 * r)
    }

}

/// Raw pointers of a backward pass beside the forward's ``AttentionLayout``.
struct GradientLayout {
    /// dO and O rows: `dOut + b·s.b + h·s.h + i·s.n` (last axis contiguous).
    let dOut: UnsafePointer<Float>, dOutStride: (b: Int, h: Int, n: Int)
    let out: UnsafePointer<Float>, outStride: (b: Int, h: Int, n: Int)
    /// `[B, H, N]` contiguous.
    let lse: UnsafePointer<Float>
    /// Contiguous `[B, H, N, d]`, `[B, Hkv, M, d]`, `[B, Hkv, M, dv]`, or with ``tokenMajor``
    /// `[B, N, H, d]`, `[B, M, Hkv, d]`, `[B, M, Hkv, dv]`.
    let dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>
    /// Gradients written token-major (only the exact backward writes them so).
    var tokenMajor = false
}

func withGradientLayout<R>(_ inputs: AttentionInputs, back: BackwardInputs, forward: SoftmaxAttentionForward,
                           grads: inout AttentionGradients, queryOffset: Int?,
                           _ body: (AttentionLayout, GradientLayout) throws -> R) throws -> R {
    let o = forward.headMajorOutput.lastAxisContiguous(), lse = forward.logSumExp.contiguous(), dO = back.dOut
    return try grads.queries.withUnsafeMutableBufferPointer { dq in
        try grads.keys.withUnsafeMutableBufferPointer { dk in
            try grads.values.withUnsafeMutableBufferPointer { dv in
                try o.withUnsafePointer { po in
                    try dO.withUnsafePointer { pdo in
                        try lse.withUnsafePointer { pl in
                            try inputs.withLayout(outputPointer: dq.baseAddress!, queryOffset: queryOffset) { L in
                                let G = GradientLayout(
                                    dOut: pdo, dOutStride: (dO.strides[0], dO.strides[1], dO.strides[2]),
                                    out: po, outStride: (o.strides[0], o.strides[1], o.strides[2]), lse: pl,
                                    dq: dq.baseAddress!, dk: dk.baseAddress!, dv: dv.baseAddress!)
                                return try body(L, G)
                            }
                        }
                    }
                }
            }
        }
    }
}

extension GradientLayout {
    @inline(__always) func dOutRow(_ b: Int, _ h: Int, _ i: Int) -> UnsafePointer<Float> {
        dOut + b * dOutStride.b + h * dOutStride.h + i * dOutStride.n
    }
    @inline(__always) func outRow(_ b: Int, _ h: Int, _ i: Int) -> UnsafePointer<Float> {
        out + b * outStride.b + h * outStride.h + i * outStride.n
    }

    /// Packs the block's dO rows `[stacked, dv]`, and per row `D = dO · O` and the log-sum-exp.
    func pack(_ blk: QueryBlock, _ L: AttentionLayout, dO: UnsafeMutablePointer<Float>, D: UnsafeMutablePointer<Float>,
              lse rowLSE: UnsafeMutablePointer<Float>) {
        for (gi, g) in blk.heads.enumerated() {
            let h = blk.kvHead * L.group + g, r0 = gi * blk.rows
            ak_copy_scaled(dOutRow(blk.b, h, blk.i0), dOutStride.n, dO + r0 * L.dv, L.dv, blk.rows, L.dv, 1)
            ak_row_dots(dO + r0 * L.dv, L.dv, outRow(blk.b, h, blk.i0), outStride.n, blk.rows, L.dv, D + r0)
            (rowLSE + r0).update(from: lse + (blk.b * L.H + h) * L.N + blk.i0, count: blk.rows)
        }
    }

    /// dq rows of the block = scale · the accumulated dS K.
    func writeQueryGradients(_ blk: QueryBlock, _ L: AttentionLayout, acc: UnsafePointer<Float>) {
        for (gi, g) in blk.heads.enumerated() {
            let h = blk.kvHead * L.group + g
            let dst = tokenMajor ? dq + ((blk.b * L.N + blk.i0) * L.H + h) * L.d : dq + ((blk.b * L.H + h) * L.N + blk.i0) * L.d
            ak_copy_scaled(acc + gi * blk.rows * L.d, L.d, dst, tokenMajor ? L.H * L.d : L.d, blk.rows, L.d, L.scale)
        }
    }
}

/// The softmax backward over query blocks (outer) and key tiles (inner) for each work item; dQ of
/// a block accumulates in scratch, dK and dV in the item's own rows. See
/// ``scaledDotProductAttentionBackward(queries:keys:values:forward:outputGradient:scale:mask:threads:)``.
func runSoftmaxBackward(_ L: AttentionLayout, _ grad: GradientLayout, plan: AttentionBackwardPlan) throws {
    let (G, Gp, Br, Bc) = (L.group, plan.headsPerPart, plan.queryBlock, plan.keyTile)
    let (d, dv, M, N, parts) = (L.d, L.dv, L.M, L.N, plan.parts)
    let R = Gp * Br, triangleTile = min(Bc, 64)
    let kv = try HeadPartGradients(dk: grad.dk, dv: grad.dv, sequences: L.B * L.Hkv, parts: parts, M: M, d: d, dvWidth: dv,
                                   tokenMajorHeads: grad.tokenMajor ? L.Hkv : nil, purpose: "attention backward")
    defer { kv.deallocate() }
    let (floats, ints) = plan.workerScratch
    try runWithScratch(items: plan.items, threads: plan.threads, floats: floats, ints: ints,
                       purpose: "attention backward") { ws, queue in
        let qp = ws.floats(R * d), dO = ws.floats(R * dv), dqAcc = ws.floats(R * d)
        let s = ws.floats(R * Bc), dP = ws.floats(R * Bc), D = ws.floats(R), lse = ws.floats(R)
        let valid = ws.ints(R), lower = ws.ints(R)
        while let item = queue.next() {
            let part = item % parts, bh = item / parts
            let b = bh / L.Hkv, kvh = bh % L.Hkv
            let heads = (part * Gp)..<max(part * Gp, min(G, (part + 1) * Gp))
            // This item's dK/dV rows: the output's for part 0, a private partial otherwise.
            let (dkBase, dvBase, ldk, ldv) = kv.stridedRows(sequence: bh, part: part)
            if heads.isEmpty { continue }   // a part with no heads left contributes zeros
            var blk = QueryBlock(b: b, kvHead: kvh, i0: 0, rows: 0, heads: heads)
            /// One key tile `j0 ..< j0 + w` for the stacked rows `rs`.
            func tile(rows rs: Range<Int>, j0: Int, w: Int, masked: Bool) {
                let r0 = rs.lowerBound, n = rs.count
                let sr = s + r0 * Bc, dpr = dP + r0 * Bc
                let k = L.kRow(b, kvh, j0), v = L.vRow(b, kvh, j0)
                BLAS.sgemm(.none, .transpose, m: n, n: w, k: d, a: qp + r0 * d, lda: d, b: k, ldb: L.kStride.m, c: sr, ldc: Bc)
                L.addBias(blk, j0: j0, width: w, s: s, lds: Bc, rows: rs)
                if masked { L.maskBeforeWindow(s, lds: Bc, rows: rs, lower: lower) }
                ak_probs_from_lse(sr, n, w, Bc, masked ? valid + r0 : nil, lse + r0)
                BLAS.sgemm(.transpose, .none, m: w, n: dv, k: n, a: sr, lda: Bc, b: dO + r0 * dv, ldb: dv,
                           beta: 1, c: dvBase + j0 * ldv, ldc: ldv)
                BLAS.sgemm(.none, .transpose, m: n, n: w, k: dv, a: dO + r0 * dv, lda: dv, b: v, ldb: L.vStride.m, c: dpr, ldc: Bc)
                ak_softmax_grad(sr, Bc, dpr, Bc, n, w, D + r0)
                BLAS.sgemm(.transpose, .none, m: w, n: d, k: n, a: sr, lda: Bc, b: qp + r0 * d, ldb: d,
                           beta: 1, c: dkBase + j0 * ldk, ldc: ldk)
                BLAS.sgemm(.none, .none, m: n, n: d, k: w, a: sr, lda: Bc, b: k, ldb: L.kStride.m,
                           beta: 1, c: dqAcc + r0 * d, ldc: d)
            }
            var i0 = 0
            while i0 < N {
                blk = QueryBlock(b: b, kvHead: kvh, i0: i0, rows: min(Br, N - i0), heads: heads)
                let rows = blk.stacked
                L.packQueries(blk, into: qp)
                grad.pack(blk, L, dO: dO, D: D, lse: lse)
                dqAcc.update(repeating: 0, count: rows * d)
                // The band of keys some row sees, as the forward walks it: keys every row sees in
                // wide tiles, the causal triangle and the sliding window's lower edge in narrow
                // tiles restricted to the rows that see them; tiles outside the band are skipped.
                L.walkKeyTiles(blk, keys: L.blockKeys(blk), wide: Bc, narrow: triangleTile) { j0, w, t0, t1, masked in
                    if masked { L.fillBand(blk, j0: j0, width: w, rows: t0, t1, valid: valid, lower: lower) }
                    if t0 == 0 && t1 == blk.rows {
                        tile(rows: 0..<rows, j0: j0, w: w, masked: masked)
                    } else {
                        for gi in 0..<heads.count {
                            tile(rows: (gi * blk.rows + t0)..<(gi * blk.rows + t1), j0: j0, w: w, masked: masked)
                        }
                    }
                }
                grad.writeQueryGradients(blk, L, acc: dqAcc)
                i0 += blk.rows
            }
        }
    }
    kv.reduce(threads: plan.threads)
}
