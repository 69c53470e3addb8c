import AttentionTensor
import CAttentionKernels
import Foundation

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
func runLinear(_ L: AttentionLayout, plan: LinearAttentionPlan, favor: FavorFeatures?, epsilon: Float) throws {
    let F = plan.featureDimension, C = plan.rowsPerChunk, Gp = plan.headsPerPart
    let G = L.group, d = L.d, dv = L.dv, M = L.M, N = L.N, parts = plan.parts
    let scaledW = favor.map { f in f.projection.map { $0 * Foundation.pow(Float(d), -0.25) } } ?? []
    let normalised = plan.featureMap != .softmax
    try scaledW.withUnsafeBufferPointer { wbuf in
        let gq = Gp * C
        try runWithScratch(items: L.B * L.Hkv * parts, threads: plan.threads, floats: plan.workspaceFloats, ints: gq,
                           arrays: 12, purpose: "linear attention chunks of \(C) rows") { ws, queue in
            let phiK = ws.floats(C * F), phiQ = ws.floats(gq * F), num = ws.floats(gq * dv), den = ws.floats(gq)
            let A = plan.causal ? ws.floats(gq * C) : phiQ
            let state = LinearState(S: ws.floats(F * dv), z: ws.floats(F), F: F, dv: dv)
            let (S, z) = (state.S, state.z)
            let colmax = ws.floats(F)
            let r1 = ws.floats(max(C, gq)), r2 = ws.floats(max(C, gq)), valid = ws.ints(gq)
            while let item = queue.next() {
                let part = item % parts, bh = item / parts
                let b = bh / L.Hkv, kvh = bh % L.Hkv
                let heads = (part * Gp)..<min(G, (part + 1) * Gp)
                if heads.isEmpty { continue }
                var phi = FeatureMapper(map: plan.featureMap, d: d, F: F, w: wbuf.baseAddress, rowScratch: r1,
                                        rowScratch2: r2, colmax: colmax)
                state.reset()
                if let s0 = L.linearInitialState {
                    let src = s0 + bh * F * (dv + 1)
                    for f in 0..<F {
                        (S + f * dv).update(from: src + f * (dv + 1), count: dv)
                        z[f] = src[f * (dv + 1) + dv]
                    }
                }
                if plan.featureMap == .softmax {
                    colmax.update(repeating: -.infinity, count: d)
                    ak_col_max(L.kRow(b, kvh, 0), M, d, L.kStride.m, colmax)
                }
                /// Adds keys `j0 ..< j0 + w` to the state (their features must be in phiK).
                func absorb(_ j0: Int, _ w: Int) {
                    state.write(phiK, ldf: F, rows: w, values: L.vRow(b, kvh, j0), ldv: L.vStride.m,
                                updateNormalizer: plan.featureMap != .softmax)
                }
                /// Query features of positions `i0 ..< i0 + n` for the part's heads, stacked.
                func queryFeatures(_ i0: Int, _ n: Int) {
                    for (gi, g) in heads.enumerated() {
                        phi.queries(L.qRow(b, kvh * G + g, i0), ld: L.qStride.n, rows: n, into: phiQ + gi * n * F)
                    }
                }
                /// num = φ(Q)·S and den = φ(Q)·z for the stacked rows.
                func applyState(_ rows: Int) {
                    state.read(phiQ, ldf: F, rows: rows, num: num, ldn: dv, den: normalised ? den : nil)
                }
                /// out rows = num / (den + ε) (or num, for Efficient Attention).
                func writeOut(_ i0: Int, _ n: Int) {
                    for (gi, g) in heads.enumerated() {
                        let dst = L.outRow(b, kvh * G + g, i0)
                        let kept = L.normalizers.map { $0 + (b * L.H + kvh * G + g) * N + i0 }
                        if normalised {
                            if epsilon != 0 { for t in 0..<n { den[gi * n + t] += epsilon } }
                            ak_divide_rows(num + gi * n * dv, dv, dst, dv, n, dv, den + gi * n)
                            kept?.update(from: den + gi * n, count: n)
                        } else {
                            ak_copy_scaled(num + gi * n * dv, dv, dst, dv, n, dv, 1)
                            kept?.update(repeating: 1, count: n)
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
