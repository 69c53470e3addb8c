import AttentionTensor
import CAttentionKernels

/// Materialised exact attention, a query block at a time: the block's full score rows
/// `S = (scale·Q) Kᵀ` (`group·rows × M'`, where `M'` stops at the last row's causal or padding
/// limit), a normalised row softmax in place, then `O = P V`. Workspace per worker:
/// `R·(d + M + 1)` floats with `R = group · queryBlock`, never `B·H·N·M`.
func runMaterialized(_ L: AttentionLayout, plan: ExactAttentionPlan) throws {
    let G = L.group, Br = plan.queryBlock, R = G * Br
    let d = L.d, dv = L.dv, M = L.M
    let (floats, ints) = plan.workerScratch
    try runWithScratch(items: L.workItems(blockRows: Br), threads: plan.threads, floats: floats, ints: ints,
                       purpose: "materialized attention") { ws, queue in
        let qp = ws.floats(R * d), s = ws.floats(R * M), valid = ws.ints(R)
        while let item = queue.next() {
            let blk = L.queryBlock(item: item, blockRows: Br)
            let rows = G * blk.rows
            let keyEnd = L.keyLimit(blk.b, blk.i0 + blk.rows - 1)
            if keyEnd == 0 {   // every row of the block is fully masked
                for g in 0..<G {
                    L.outRow(blk.b, blk.kvHead * G + g, blk.i0).update(repeating: 0, count: blk.rows * dv)
                }
                continue
            }
            L.packQueries(blk, into: qp)
            BLAS.sgemm(.none, .transpose, m: rows, n: keyEnd, k: d, a: qp, lda: d,
                       b: L.kRow(blk.b, blk.kvHead, 0), ldb: L.kStride.m, c: s, ldc: keyEnd)
            L.addBias(blk, j0: 0, width: keyEnd, s: s, lds: keyEnd)
            let masked = L.fillValid(blk, j0: 0, width: keyEnd, valid: valid)
            ak_softmax_rows(s, rows, keyEnd, keyEnd, masked ? valid : nil)
            let v = L.vRow(blk.b, blk.kvHead, 0)
            if blk.rows == L.N {
                // The whole sequence in one block: the group's output rows are contiguous.
                BLAS.sgemm(.none, .none, m: rows, n: dv, k: keyEnd, a: s, lda: keyEnd, b: v, ldb: L.vStride.m,
                           c: L.outRow(blk.b, blk.kvHead * G, 0), ldc: dv)
            } else {
                for g in 0..<G {
                    BLAS.sgemm(.none, .none, m: blk.rows, n: dv, k: keyEnd, a: s + g * blk.rows * keyEnd,
                               lda: keyEnd, b: v, ldb: L.vStride.m,
                               c: L.outRow(blk.b, blk.kvHead * G + g, blk.i0), ldc: dv)
                }
            }
        }
    }
}
