import AttentionTensor
import CAttentionKernels

/// Materialised exact attention, a query block at a time: the block's full score rows
/// `S = (scale·Q) Kᵀ` (`group·rows × M'`, where the keys `M'` start at the first row's sliding
/// window, if any, and stop at the last row's causal or padding limit), a normalised row softmax
/// in place, then `O = P V`. Workspace per worker: `R·(d + M + 2)` floats with
/// `R = group · queryBlock`, never `B·H·N·M`.
func runMaterialized(_ L: AttentionLayout, plan: ExactAttentionPlan) throws {
    precondition(L.ring == nil, "ring-buffer keys go through the tiled kernel")
    let G = L.group, Br = plan.queryBlock, R = G * Br
    let d = L.d, dv = L.dv, M = L.M
    let (floats, ints) = plan.workerScratch
    try runWithScratch(items: L.workItems(blockRows: Br), threads: plan.threads, floats: floats, ints: ints,
                       purpose: "materialized attention") { ws, queue in
        let qp = ws.floats(R * d), s = ws.floats(R * M), valid = ws.ints(R), lower = ws.ints(R)
        while let item = queue.next() {
            let blk = L.queryBlock(item: item, blockRows: Br)
            let rows = G * blk.rows
            let band = L.blockKeys(blk)
            if band.isEmpty {   // every row of the block is fully masked
                for g in 0..<G {
                    for t in 0..<blk.rows { L.outRow(blk.b, blk.kvHead * G + g, blk.i0 + t).update(repeating: 0, count: dv) }
                }
                continue
            }
            let (j0, width) = (band.lowerBound, band.count)
            L.packQueries(blk, into: qp)
            BLAS.sgemm(.none, .transpose, m: rows, n: width, k: d, a: qp, lda: d,
                       b: L.kRow(blk.b, blk.kvHead, j0), ldb: L.kStride.m, c: s, ldc: width)
            L.addBias(blk, j0: j0, width: width, s: s, lds: width)
            var masked = L.fillValid(blk, j0: j0, width: width, valid: valid)
            if L.window != nil {
                L.fillBand(blk, j0: j0, width: width, rows: 0, blk.rows, valid: valid, lower: lower)
                L.maskBeforeWindow(s, lds: width, rows: 0..<rows, lower: lower)
                masked = true
            }
            ak_softmax_rows(s, rows, width, width, masked ? valid : nil)
            let v = L.vRow(blk.b, blk.kvHead, j0)
            if blk.rows == L.N && L.headMajorOutput {
                // The whole sequence in one block: the group's output rows are contiguous.
                BLAS.sgemm(.none, .none, m: rows, n: dv, k: width, a: s, lda: width, b: v, ldb: L.vStride.m,
                           c: L.outRow(blk.b, blk.kvHead * G, 0), ldc: dv)
            } else {
                for g in 0..<G {
                    BLAS.sgemm(.none, .none, m: blk.rows, n: dv, k: width, a: s + g * blk.rows * width,
                               lda: width, b: v, ldb: L.vStride.m,
                               c: L.outRow(blk.b, blk.kvHead * G + g, blk.i0), ldc: L.outStride.n)
                }
            }
        }
    }
}
