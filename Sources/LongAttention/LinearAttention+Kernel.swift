import AttentionTensor
import CAttentionKernels
import Foundation

/// φ for one work item: maps row blocks of queries or keys to features, keeping what a feature
/// map needs across chunks (FAVOR+'s running key stabiliser, Efficient Attention's column max).
struct FeatureMapper {
    let map: LinearFeatureMap
    let d: Int, F: Int
    /// FAVOR+ projection `W · d^(-1/4)`, `[m, d]`.
    let w: UnsafePointer<Float>?
    /// Scratch, one float per row of the largest block.
    let rowScratch: UnsafeMutablePointer<Float>, rowScratch2: UnsafeMutablePointer<Float>
    /// Efficient Attention: per-feature max of the keys over all positions.
    let colmax: UnsafeMutablePointer<Float>
    /// FAVOR+: the largest `w·k' - |k'|²/2` seen so far; key features are `exp(· - keyShift)`.
    var keyShift: Float = -.infinity

    /// φ(x) for `rows` rows at `src` (leading dimension ld) into `dst [rows, F]`.
    /// Row-wise constant factors are dropped where they cancel between numerator and normaliser:
    /// FAVOR+ query features are `exp(w·q' - max_j w_j·q')`.
    func queries(_ src: UnsafePointer<Float>, ld: Int, rows: Int, into dst: UnsafeMutablePointer<Float>) {
        switch map {
        case .elu: ak_feature_rows(AK_FEATURE_ELU1, src, ld, dst, F, rows, d)
        case .relu: ak_feature_rows(AK_FEATURE_RELU, src, ld, dst, F, rows, d)
        case .softmax:
            ak_copy_scaled(src, ld, dst, F, rows, d, 1)
            ak_softmax_rows(dst, rows, d, F, nil)
        case .favor:
            BLAS.sgemm(.none, .transpose, m: rows, n: F, k: d, a: src, lda: ld, b: w!, ldb: d, c: dst, ldc: F)
            ak_row_max(dst, rows, F, F, rowScratch)
            ak_exp_sub_rows(dst, rows, F, F, rowScratch)
        }
    }

    /// φ(k) for `rows` key rows into `dst [rows, F]`. FAVOR+ may raise its stabiliser, rescaling
    /// the state `S [F, dv]`, `z [F]` by the same factor so that state and new features agree.
    /// Efficient Attention adds the column sums of its features to `z`.
    mutating func keys(_ src: UnsafePointer<Float>, ld: Int, rows: Int, into dst: UnsafeMutablePointer<Float>,
                       S: UnsafeMutablePointer<Float>, z: UnsafeMutablePointer<Float>, dv: Int) {
        switch map {
        case .elu: ak_feature_rows(AK_FEATURE_ELU1, src, ld, dst, F, rows, d)
        case .relu: ak_feature_rows(AK_FEATURE_RELU, src, ld, dst, F, rows, d)
        case .softmax: ak_exp_sub_cols(src, rows, d, ld, colmax, dst, F, z)
        case .favor:
            BLAS.sgemm(.none, .transpose, m: rows, n: F, k: d, a: src, lda: ld, b: w!, ldb: d, c: dst, ldc: F)
            // |k'|²/2 with k' = k·d^(-1/4): |k|² / (2·sqrt(d)).
            ak_row_sumsq(src, rows, d, ld, 0.5 / Float(d).squareRoot(), rowScratch)
            ak_row_max(dst, rows, F, F, rowScratch2)
            var chunkMax: Float = -.infinity
            for r in 0..<rows { chunkMax = max(chunkMax, rowScratch2[r] - rowScratch[r]) }
            if chunkMax > keyShift {
                if keyShift > -.infinity {
                    let factor = Foundation.exp(keyShift - chunkMax)
                    ak_scale(S, F * dv, factor)
                    ak_scale(z, F, factor)
                }
                keyShift = chunkMax
            }
            for r in 0..<rows { rowScratch[r] += keyShift }
            ak_exp_sub_rows(dst, rows, F, F, rowScratch)
        }
    }
}

/// Linear attention, one work item per (batch, KV head, query-head part). See
/// ``linearAttention(queries:keys:values:featureMap:causal:epsilon:chunkSize:threads:)``.
///
/// Non-causal: `S = Σ φ(K_c)ᵀ V_c`, `z = Σ colsum φ(K_c)` over key chunks, then for each query
/// chunk the group's `φ(Q)` stacked, `num = φ(Q) S` (GEMM), `den = φ(Q) z + ε` (GEMV).
/// Causal (chunked): for query chunk `c` with keys `K_c` on its diagonal,
///
///     num = φ(Q_c) S + mask(φ(Q_c) φ(K_c)ᵀ) V_c       den = φ(Q_c) z + rowsum(mask(...)) + ε
///     S += φ(K_c)ᵀ V_c,   z += colsum φ(K_c)
///
/// where the mask keeps key `j` for query `i` iff `j <= i + M - N` and `S, z` hold exactly the
/// keys before the chunk: the token-by-token recurrence, a chunk at a time.
func runLinear(_ L: AttentionLayout, plan: LinearAttentionPlan, favor: FavorFeatures?, epsilon: Float) {
    let F = plan.featureDimension, C = plan.rowsPerChunk, Gp = plan.headsPerPart
    let G = L.group, d = L.d, dv = L.dv, M = L.M, N = L.N, parts = plan.parts
    let scaledW = favor.map { f in f.projection.map { $0 * Foundation.pow(Float(d), -0.25) } } ?? []
    let normalised = plan.featureMap != .softmax
    scaledW.withUnsafeBufferPointer { wbuf in
        Parallel.run(items: L.B * L.Hkv * parts, threads: plan.threads) { _, queue in
            let gq = Gp * C
            var ws = Workspace(floats: plan.workspaceFloats, ints: gq, arrays: 12)
            defer { ws.free() }
            let phiK = ws.floats(C * F), phiQ = ws.floats(gq * F), num = ws.floats(gq * dv), den = ws.floats(gq)
            let A = plan.causal ? ws.floats(gq * C) : phiQ
            let S = ws.floats(F * dv), z = ws.floats(F), colmax = ws.floats(F)
            let r1 = ws.floats(max(C, gq)), r2 = ws.floats(max(C, gq)), valid = ws.ints(gq)
            while let item = queue.next() {
                let part = item % parts, bh = item / parts
                let b = bh / L.Hkv, kvh = bh % L.Hkv
                let heads = (part * Gp)..<min(G, (part + 1) * Gp)
                if heads.isEmpty { continue }
                var phi = FeatureMapper(map: plan.featureMap, d: d, F: F, w: wbuf.baseAddress, rowScratch: r1,
                                        rowScratch2: r2, colmax: colmax)
                S.update(repeating: 0, count: F * dv)
                z.update(repeating: 0, count: F)
                if plan.featureMap == .softmax {
                    colmax.update(repeating: -.infinity, count: d)
                    ak_col_max(L.kRow(b, kvh, 0), M, d, L.kStride.m, colmax)
                }
                /// Adds keys `j0 ..< j1` to the state (their features must be in phiK).
                func absorb(_ j0: Int, _ w: Int) {
                    BLAS.sgemm(.transpose, .none, m: F, n: dv, k: w, a: phiK, lda: F,
                               b: L.vRow(b, kvh, j0), ldb: L.vStride.m, beta: 1, c: S, ldc: dv)
                    if plan.featureMap != .softmax { ak_col_sums_add(phiK, w, F, F, z) }
                }
                /// Query features of positions `i0 ..< i0 + n` for the part's heads, stacked.
                func queryFeatures(_ i0: Int, _ n: Int) {
                    for (gi, g) in heads.enumerated() {
                        phi.queries(L.qRow(b, kvh * G + g, i0), ld: L.qStride.n, rows: n, into: phiQ + gi * n * F)
                    }
                }
                /// num = φ(Q)·S and den = φ(Q)·z for the stacked rows.
                func applyState(_ rows: Int) {
                    BLAS.sgemm(.none, .none, m: rows, n: dv, k: F, a: phiQ, lda: F, b: S, ldb: dv, c: num, ldc: dv)
                    if normalised { BLAS.sgemv(.none, m: rows, n: F, a: phiQ, lda: F, x: z, y: den) }
                }
                /// out rows = num / (den + ε) (or num, for Efficient Attention).
                func writeOut(_ i0: Int, _ n: Int) {
                    for (gi, g) in heads.enumerated() {
                        let dst = L.outRow(b, kvh * G + g, i0)
                        if normalised {
                            if epsilon != 0 { for t in 0..<n { den[gi * n + t] += epsilon } }
                            ak_divide_rows(num + gi * n * dv, dv, dst, dv, n, dv, den + gi * n)
                        } else {
                            ak_copy_scaled(num + gi * n * dv, dv, dst, dv, n, dv, 1)
                        }
                    }
                }

                if !plan.causal {
                    var j0 = 0
                    while j0 < M {
                        let w = min(C, M - j0)
                        phi.keys(L.kRow(b, kvh, j0), ld: L.kStride.m, rows: w, into: phiK, S: S, z: z, dv: dv)
                        absorb(j0, w)
                        j0 += w
                    }
                    if plan.featureMap == .softmax {   // ρk normalises over positions: divide S's rows by z
                        for f in 0..<F { ak_scale(S + f * dv, dv, 1 / z[f]) }
                    }
                    var i0 = 0
                    while i0 < N {
                        let n = min(C, N - i0)
                        queryFeatures(i0, n)
                        applyState(heads.count * n)
                        writeOut(i0, n)
                        i0 += n
                    }
                    continue
                }

                // Causal. Keys before the first query's diagonal (M > N) enter the state first.
                let off = M - N
                var j0 = 0
                while j0 < min(M, max(0, off)) {
                    let w = min(C, min(M, off) - j0)
                    phi.keys(L.kRow(b, kvh, j0), ld: L.kStride.m, rows: w, into: phiK, S: S, z: z, dv: dv)
                    absorb(j0, w)
                    j0 += w
                }
                var i0 = 0
                while i0 < N {
                    let n = min(C, N - i0)
                    let kj0 = min(max(i0 + off, 0), M), kj1 = min(max(i0 + n + off, 0), M), w = kj1 - kj0
                    if w > 0 { phi.keys(L.kRow(b, kvh, kj0), ld: L.kStride.m, rows: w, into: phiK, S: S, z: z, dv: dv) }
                    queryFeatures(i0, n)
                    let rows = heads.count * n
                    applyState(rows)
                    if w > 0 {
                        BLAS.sgemm(.none, .transpose, m: rows, n: w, k: F, a: phiQ, lda: F, b: phiK, ldb: F, c: A, ldc: C)
                        for gi in 0..<heads.count {
                            for t in 0..<n { valid[gi * n + t] = Int32(min(max(i0 + t + off - kj0 + 1, 0), w)) }
                        }
                        ak_zero_after(A, rows, w, C, valid)
                        ak_row_sums_add(A, rows, w, C, den)
                        BLAS.sgemm(.none, .none, m: rows, n: dv, k: w, a: A, lda: C,
                                   b: L.vRow(b, kvh, kj0), ldb: L.vStride.m, beta: 1, c: num, ldc: dv)
                    }
                    writeOut(i0, n)
                    if w > 0 { absorb(kj0, w) }
                    i0 += n
                }
            }
        }
    }
}
