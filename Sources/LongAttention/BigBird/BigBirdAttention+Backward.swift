import AttentionTensor
import CAttentionKernels

/// BigBird's forward for training: the output and each row's log-sum-exp, for
/// ``bigBirdAttentionBackward(queries:keys:values:plan:forward:outputGradient:scale:alibi:threads:)``.
/// Shapes and options as ``bigBirdAttention(queries:keys:values:plan:scale:alibi:threads:)``.
public func bigBirdAttentionForward(queries: Tensor, keys: Tensor, values: Tensor, plan: BigBirdPlan,
                                    scale: Float? = nil, alibi: ALiBi? = nil, threads: Int? = nil) throws -> SoftmaxAttentionForward {
    let inputs = try bigBirdInputs(queries: queries, keys: keys, values: values, plan: plan, scale: scale, alibi: alibi, threads: threads)
    let (out, lse) = try bigBirdForward(inputs, plan: plan, keepLSE: true)
    return SoftmaxAttentionForward(output: out, logSumExp: lse!)
}

/// BigBird's backward with the plan fixed: the gradient of dense attention under the plan's mask,
/// computed on the attended blocks only (linear in N, like the forward).
///
/// Middle query blocks recompute their scores with the forward's block GEMMs (shared runs for
/// the stacked heads of a group, random runs per head), `P = exp(S - lse)`, then `dV += Pᵀ dO`,
/// `dP = dO Vᵀ`, `dS = P ∘ (dP - D)`, `dK += dSᵀ (scale·Q)` and `dQ = scale · dS K`, run by run.
/// Work items are (batch, KV head, head part) and walk their query blocks in order, so the dK/dV
/// rows a block touches (window, globals, random) are never written by two threads; global rows go
/// through the exact backward on row views and are added afterwards. Bitwise the same for any
/// thread count. Shapes as the forward; `forward` from
/// ``bigBirdAttentionForward(queries:keys:values:plan:scale:alibi:threads:)`` on the same inputs.
public func bigBirdAttentionBackward(queries: Tensor, keys: Tensor, values: Tensor, plan: BigBirdPlan,
                                     forward: SoftmaxAttentionForward, outputGradient: Tensor, scale: Float? = nil,
                                     alibi: ALiBi? = nil, threads: Int? = nil) throws -> AttentionGradients {
    let inputs = try bigBirdInputs(queries: queries, keys: keys, values: values, plan: plan, scale: scale, alibi: alibi, threads: threads)
    let back = try BackwardInputs(inputs, outputGradient: outputGradient, forward: forward)
    try back.checkSoftmaxRange(inputs)
    let s = inputs.shape, N = s.N
    var grads = AttentionGradients(queries: try Tensor(zeros: [s.B, s.H, N, s.d]), keys: try Tensor(zeros: [s.B, s.Hkv, N, s.d]),
                                   values: try Tensor(zeros: [s.B, s.Hkv, N, s.dv]), beta: nil)
    if s.B * s.H * N == 0 || s.dv == 0 { return grads }   // dv = 0: L is identically 0
    let middle = (0..<plan.blockCount).filter { !plan.isGlobalRow($0) }
    if !middle.isEmpty {
        let parts = AttentionBackwardPlan(shape: s, threads: inputs.threads).parts
        try withGradientLayout(inputs, back: back, forward: forward, grads: &grads, queryOffset: nil) { L, G in
            try runBigBirdBackward(L, G, plan: plan, middle: middle, parts: parts, threads: inputs.threads)
        }
    }
    // Global rows: the exact backward on row views; their dK/dV add to the sparse rows'.
    for range in bigBirdGlobalRanges(plan) {
        let keyRange = plan.causal ? 0..<range.upperBound : 0..<N
        let rows = try inputs.restricted(rows: range, keyRows: keyRange,
                                         mask: AttentionMask(isCausal: plan.causal, alibi: inputs.mask.alibi))
        let saved = SoftmaxAttentionForward(output: try forward.output.rows(range),
                                            logSumExp: try forward.logSumExp.slice(axis: -1, range))
        let g = try exactBackward(rows, forward: saved, outputGradient: try back.dOut.rows(range), queryOffset: range.lowerBound)
        try grads.queries.copyRows(from: g.queries, at: range.lowerBound)
        try grads.keys.addRows(g.keys, at: keyRange.lowerBound)
        try grads.values.addRows(g.values, at: keyRange.lowerBound)
    }
    return grads
}

func runBigBirdBackward(_ L: AttentionLayout, _ grad: GradientLayout, plan: BigBirdPlan, middle: [Int], parts: Int,
                        threads: Int) throws {
    let (G, b, d, dv, N) = (L.group, plan.blockSize, L.d, L.dv, L.N)
    let Gp = (G + parts - 1) / parts
    let R = Gp * b, ldS = bigBirdMaxColumns(plan: plan)
    let runs = BigBirdRunTable(plan)
    let (scores, overflow) = R.multipliedReportingOverflow(by: 2 * ldS)
    guard !overflow else { throw AttentionError.tooLarge(buffer: "BigBird score blocks of \(R) × 2·\(ldS)", bytes: nil, limit: nil) }
    let kv = try HeadPartGradients(dk: grad.dk, dv: grad.dv, sequences: L.B * L.Hkv, parts: parts, M: N, d: d, dvWidth: dv,
                                   purpose: "BigBird backward")
    defer { kv.deallocate() }
    try runWithScratch(items: L.B * L.Hkv * parts, threads: threads, floats: R * (2 * d + dv + 2) + scores, ints: R,
                       purpose: "BigBird backward blocks of \(R) stacked rows × \(ldS) columns") { ws, queue in
        let qp = ws.floats(R * d), dO = ws.floats(R * dv), dqAcc = ws.floats(R * d)
        let s = ws.floats(R * ldS), dP = ws.floats(R * ldS), D = ws.floats(R), lse = ws.floats(R), valid = ws.ints(R)
        while let item = queue.next() {
            let part = item % parts, bh = item / parts
            let heads = (part * Gp)..<max(part * Gp, min(G, (part + 1) * Gp))
            let (dkBase, dvBase) = kv.rows(sequence: bh, part: part)
            if heads.isEmpty { continue }
            for i in middle {
                let blk = QueryBlock(b: bh / L.Hkv, kvHead: bh % L.Hkv, i0: i * b, rows: min(b, N - i * b), heads: heads)
                let n = blk.rows, rows = blk.stacked
                L.packQueries(blk, into: qp)
                grad.pack(blk, L, dO: dO, D: D, lse: lse)
                let sharedColumns = bigBirdScores(L, runs: runs, block: blk, queryBlock: i, packed: qp, scores: s, ldS: ldS, valid: valid)
                let shared = runs.shared[i]
                ak_probs_from_lse(s, rows, ldS, ldS, valid, lse)
                // dP over the same columns: shared runs for the stacked rows, random runs per head.
                var col = 0
                for run in shared {
                    BLAS.sgemm(.none, .transpose, m: rows, n: run.count, k: dv, a: dO, lda: dv,
                               b: L.vRow(blk.b, blk.kvHead, run.lowerBound), ldb: L.vStride.m, c: dP + col, ldc: ldS)
                    col += run.count
                }
                for gi in 0..<heads.count {
                    var c = sharedColumns
                    for run in runs.random[blk.kvHead * G + heads.lowerBound + gi][i] {
                        BLAS.sgemm(.none, .transpose, m: n, n: run.count, k: dv, a: dO + gi * n * dv, lda: dv,
                                   b: L.vRow(blk.b, blk.kvHead, run.lowerBound), ldb: L.vStride.m, c: dP + gi * n * ldS + c, ldc: ldS)
                        c += run.count
                    }
                }
                // dV += Pᵀ dO before P becomes dS.
                col = 0
                for run in shared {
                    BLAS.sgemm(.transpose, .none, m: run.count, n: dv, k: rows, a: s + col, lda: ldS, b: dO, ldb: dv,
                               beta: 1, c: dvBase + run.lowerBound * dv, ldc: dv)
                    col += run.count
                }
                for gi in 0..<heads.count {
                    var c = sharedColumns
                    for run in runs.random[blk.kvHead * G + heads.lowerBound + gi][i] {
                        BLAS.sgemm(.transpose, .none, m: run.count, n: dv, k: n, a: s + gi * n * ldS + c, lda: ldS,
                                   b: dO + gi * n * dv, ldb: dv, beta: 1, c: dvBase + run.lowerBound * dv, ldc: dv)
                        c += run.count
                    }
                    // Only the columns this head uses: dP past them holds another block's values.
                    ak_softmax_grad(s + gi * n * ldS, ldS, dP + gi * n * ldS, ldS, n, Int(valid[gi * n]), D + gi * n)
                }
                // dK += dSᵀ (scale·Q), dQ = Σ dS K, run by run.
                dqAcc.update(repeating: 0, count: rows * d)
                col = 0
                for run in shared {
                    let k = L.kRow(blk.b, blk.kvHead, run.lowerBound)
                    BLAS.sgemm(.transpose, .none, m: run.count, n: d, k: rows, a: s + col, lda: ldS, b: qp, ldb: d,
                               beta: 1, c: dkBase + run.lowerBound * d, ldc: d)
                    BLAS.sgemm(.none, .none, m: rows, n: d, k: run.count, a: s + col, lda: ldS, b: k, ldb: L.kStride.m,
                               beta: 1, c: dqAcc, ldc: d)
                    col += run.count
                }
                for gi in 0..<heads.count {
                    var c = sharedColumns
                    for run in runs.random[blk.kvHead * G + heads.lowerBound + gi][i] {
                        let k = L.kRow(blk.b, blk.kvHead, run.lowerBound)
                        BLAS.sgemm(.transpose, .none, m: run.count, n: d, k: n, a: s + gi * n * ldS + c, lda: ldS,
                                   b: qp + gi * n * d, ldb: d, beta: 1, c: dkBase + run.lowerBound * d, ldc: d)
                        BLAS.sgemm(.none, .none, m: n, n: d, k: run.count, a: s + gi * n * ldS + c, lda: ldS, b: k,
                                   ldb: L.kStride.m, beta: 1, c: dqAcc + gi * n * d, ldc: d)
                        c += run.count
                    }
                }
                grad.writeQueryGradients(blk, L, acc: dqAcc)
            }
        }
    }
    kv.reduce(threads: threads)
}
