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
/// row's diagonal, so tiles wholly above it are never computed; the block's own triangle is
/// walked in 64-key tiles restricted to the rows that see them, and only those carry per-row
/// column limits. Workspace per worker: `R·(d + tile + dv + 3)` floats with
/// `R = group · queryBlock`, independent of N and M.
func runTiled(_ L: AttentionLayout, plan: ExactAttentionPlan) {
    let G = L.group, Br = plan.queryBlock, Bc = plan.keyTile, R = G * Br
    let triangleTile = min(Bc, 64)
    let d = L.d, dv = L.dv
    Parallel.run(items: L.workItems(blockRows: Br), threads: plan.threads) { _, queue in
        var ws = Workspace(floats: R * (d + Bc + dv + 2), ints: R)
        defer { ws.free() }
        let qp = ws.floats(R * d), s = ws.floats(R * Bc), o = ws.floats(R * dv)
        let m = ws.floats(R), l = ws.floats(R), valid = ws.ints(R)
        var blk = QueryBlock(b: 0, kvHead: 0, i0: 0, rows: 0)
        /// One key tile `j0 ..< j0 + w` for the stacked rows `rs`: scores, online softmax, P·V.
        func tile(rows rs: Range<Int>, j0: Int, w: Int, masked: Bool) {
            let r0 = rs.lowerBound, n = rs.count
            let sr = s + r0 * Bc
            BLAS.sgemm(.none, .transpose, m: n, n: w, k: d, a: qp + r0 * d, lda: d,
                       b: L.kRow(blk.b, blk.kvHead, j0), ldb: L.kStride.m, c: sr, ldc: Bc)
            L.addBias(blk, j0: j0, width: w, s: s, lds: Bc, rows: rs)
            ak_online_softmax_tile(sr, n, w, Bc, masked ? valid + r0 : nil, m + r0, l + r0, o + r0 * dv, dv, dv)
            BLAS.sgemm(.none, .none, m: n, n: dv, k: w, a: sr, lda: Bc,
                       b: L.vRow(blk.b, blk.kvHead, j0), ldb: L.vStride.m, beta: 1, c: o + r0 * dv, ldc: dv)
        }
        while let item = queue.next() {
            blk = L.queryBlock(item: item, blockRows: Br)
            let rows = G * blk.rows
            L.packQueries(blk, into: qp)
            o.update(repeating: 0, count: rows * dv)
            m.update(repeating: -.infinity, count: rows)
            l.update(repeating: 0, count: rows)
            // Keys every row of the block sees (no mask), then the causal triangle up to the keys
            // the last row sees. Tiles wholly above the diagonal are never visited.
            let shared = L.keyLimit(blk.b, blk.i0)
            let keyEnd = L.keyLimit(blk.b, blk.i0 + blk.rows - 1)
            var j0 = 0
            while j0 < shared {
                let w = min(Bc, shared - j0)
                tile(rows: 0..<rows, j0: j0, w: w, masked: false)
                j0 += w
            }
            // The triangle in narrow tiles; in each, only the rows that see one of its keys take
            // part (per head: a suffix of the block's positions), so the work above the diagonal
            // is at most a triangleTile-wide sliver instead of a queryBlock-wide square.
            while j0 < keyEnd {
                let w = min(triangleTile, keyEnd - j0)
                _ = L.fillValid(blk, j0: j0, width: w, valid: valid)
                // First position whose limit passes j0: keyLimit(i) > j0.
                var t0 = 0
                while t0 < blk.rows && L.keyLimit(blk.b, blk.i0 + t0) <= j0 { t0 += 1 }
                if t0 == 0 {
                    tile(rows: 0..<rows, j0: j0, w: w, masked: true)
                } else if t0 < blk.rows {
                    for g in 0..<G { tile(rows: (g * blk.rows + t0)..<((g + 1) * blk.rows), j0: j0, w: w, masked: true) }
                }
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
