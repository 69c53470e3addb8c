import AttentionTensor
import CAttentionKernels

/// FlashAttention-style exact attention: for each query block, stream over key tiles keeping a
/// running row max `m`, row sum `l` and unnormalised output `o`:
///
///     s = (scale·Q) K_tileᵀ                       one GEMM, group·rows × tile
///     m' = max(m, rowmax(s)),  p = exp(s - m')     vectorised (ak_online_softmax_tile)
///     l = l·exp(m - m') + rowsum(p),  o = o·exp(m - m') + p V_tile   (second GEMM, β = 1)
///
/// and divide `o` by `l` once at the end. Under a causal mask the key range stops at the last
/// row's diagonal, so tiles wholly above it are never computed; only tiles crossing it carry
/// per-row column limits. Workspace per worker: `R·(d + tile + dv + 3)` floats with
/// `R = group · queryBlock`, independent of N and M.
func runTiled(_ L: AttentionLayout, plan: ExactAttentionPlan) {
    let G = L.group, Br = plan.queryBlock, Bc = plan.keyTile, R = G * Br
    let d = L.d, dv = L.dv
    Parallel.run(items: L.workItems(blockRows: Br), threads: plan.threads) { _, queue in
        var ws = Workspace(floats: R * (d + Bc + dv + 2), ints: R)
        defer { ws.free() }
        let qp = ws.floats(R * d), s = ws.floats(R * Bc), o = ws.floats(R * dv)
        let m = ws.floats(R), l = ws.floats(R), valid = ws.ints(R)
        while let item = queue.next() {
            let blk = L.queryBlock(item: item, blockRows: Br)
            let rows = G * blk.rows
            L.packQueries(blk, into: qp)
            o.update(repeating: 0, count: rows * dv)
            m.update(repeating: -.infinity, count: rows)
            l.update(repeating: 0, count: rows)
            let keyEnd = L.keyLimit(blk.b, blk.i0 + blk.rows - 1)   // the last row sees the most keys
            var j0 = 0
            while j0 < keyEnd {
                let w = min(Bc, keyEnd - j0)
                BLAS.sgemm(.none, .transpose, m: rows, n: w, k: d, a: qp, lda: d,
                           b: L.kRow(blk.b, blk.kvHead, j0), ldb: L.kStride.m, c: s, ldc: Bc)
                L.addBias(blk, j0: j0, width: w, s: s, lds: Bc)
                let masked = L.fillValid(blk, j0: j0, width: w, valid: valid)
                ak_online_softmax_tile(s, rows, w, Bc, masked ? valid : nil, m, l, o, dv, dv)
                BLAS.sgemm(.none, .none, m: rows, n: dv, k: w, a: s, lda: Bc,
                           b: L.vRow(blk.b, blk.kvHead, j0), ldb: L.vStride.m, beta: 1, c: o, ldc: dv)
                j0 += w
            }
            // Rows never given a visible key keep l = 0 and come out as zeros.
            for g in 0..<G {
                ak_divide_rows(o + g * blk.rows * dv, dv, L.outRow(blk.b, blk.kvHead * G + g, blk.i0), dv,
                               blk.rows, dv, l + g * blk.rows)
            }
        }
    }
}
