import AttentionTensor
import Foundation
import CAttentionKernels

/// FlashAttention-style exact attention: for each query block, stream over key tiles keeping a
/// running row max `m`, row sum `l` and unnormalised output `o`:
///
///     s = (scale·Q) K_tileᵀ                       one GEMM, group·rows × tile
///     m' = max(m, rowmax(s)),  p = exp(s - m')     vectorised (ak_online_softmax_tile)
///     l = l·exp(m - m') + rowsum(p),  o = o·exp(m - m') + p V_tile   (second GEMM, β = 1)
///
/// and divide `o` by `l` once at the end. Under a causal mask the key range stops at the last
/// row's diagonal, so tiles wholly above it are never computed; under a sliding window of `W` it
/// also starts at the first row's window, so a block visits `W + rows - 1` keys at most and the
/// whole call costs O(N·W·d). The band's triangles are walked in 64-key tiles restricted to the
/// rows that see them, and only those carry per-row column limits (and, for the window's lower
/// edge, scores set to -inf). Workspace per worker: `R·(d + tile + dv + 4)` floats with
/// `R = group · queryBlock`, independent of N and M.
///
/// Decoding (few query rows, few KV heads) splits each block's keys into ``ExactAttentionPlan/keySplits``
/// contiguous ranges run as separate work items, each leaving its `(m, l, o)`; the ranges are
/// merged afterwards with the same associative rule, in a fixed order. Tiles of at most 32 rows
/// use the decode kernels instead of GEMM, which read each key and value row once, at memory speed.
func runTiled(_ L: AttentionLayout, plan: ExactAttentionPlan) throws {
    let G = L.group, Br = plan.queryBlock, Bc = plan.keyTile, R = G * Br
    let triangleTile = min(Bc, 64)
    let d = L.d, dv = L.dv, splits = plan.keySplits
    // Up to this many rows, a tile's products go through the decode kernels, which read K and V
    // in place (BLAS packs the key tile first) and feed each loaded vector to four rows. Measured
    // at 128K keys, H = 32, d = 128: MQA's 32 rows 14–17 ms with the kernels, 45–56 ms with
    // OpenBLAS's generic kernel and 21–23 ms with its SkylakeX kernel.
    let smallRows = 32
    let blocks = L.workItems(blockRows: Br)
    // Split results: per (block, split), R rows of o (dv), then m and l.
    let partialStride = R * (dv + 2)
    var partial: UnsafeMutablePointer<Float>? = nil
    if splits > 1 {
        let (count, overflow) = (blocks * splits).multipliedReportingOverflow(by: partialStride)
        guard !overflow else { throw AttentionError.tooLarge(buffer: "key-split partial results", bytes: nil, limit: nil) }
        try checkBudget(bytes: count * 4, purpose: "key-split partial results")
        partial = .allocate(capacity: count)
    }
    defer { partial?.deallocate() }
    var (floats, ints) = plan.workerScratch
    // A low-precision cache: tiles of up to `storedRows` stacked rows read the stored rows directly
    // (each converted value feeds at most 4 rows); larger ones (MQA's 32 query heads, a prefill
    // against the cache) convert their key and value tile to float32 here, once, for the f32
    // kernels or the GEMMs: converting a 512-key tile costs what one 4-row pass over it does.
    let storedRows = 4
    let converted = L.stored != nil && R > storedRows ? Bc * max(d, dv) : 0
    floats += converted
    // A q8_0 cache: the stacked query rows quantised once per block (8-bit blocks of 32) for the
    // integer q·k kernel, which every key tile of the block then reads.
    let quantisedRowBytes = L.stored?.kind == Int32(AK_KV_Q8_0) && R <= storedRows ? ak_kv_q8_query_bytes(d) : 0
    floats += (R * quantisedRowBytes + 3) / 4
    try runWithScratch(items: blocks * splits, threads: plan.threads, floats: floats, ints: ints,
                       purpose: "tiled attention") { ws, queue in
        let qp = ws.floats(R * d), s = ws.floats(R * Bc), o = ws.floats(R * dv)
        let m = ws.floats(R), l = ws.floats(R), valid = ws.ints(R), lower = ws.ints(R)
        let tileBuffer = ws.floats(converted)
        let quantised = UnsafeMutableRawPointer(ws.floats((R * quantisedRowBytes + 3) / 4))
        var blk = QueryBlock(b: 0, kvHead: 0, i0: 0, rows: 0, heads: 0..<G)
        /// One key tile `j0 ..< j0 + w` for the stacked rows `rs`: scores, online softmax, P·V.
        func tile(rows rs: Range<Int>, j0: Int, w: Int, masked: Bool) {
            let r0 = rs.lowerBound, n = rs.count
            let sr = s + r0 * Bc
            let slot = L.keySlot(j0)
            if let kv = L.stored {
                let k = kv.keyRow(blk.b, blk.kvHead, slot), v = kv.valueRow(blk.b, blk.kvHead, slot)
                if n <= storedRows && quantisedRowBytes > 0 {
                    ak_kv_q8_rows_dot_keys(quantised + r0 * quantisedRowBytes, n, d, k, kv.keyStride.m, w, sr, Bc)
                } else if n <= storedRows {
                    ak_kv_rows_dot_keys(kv.kind, qp + r0 * d, d, n, d, k, kv.keyStride.m, w, sr, Bc)
                } else {
                    ak_kv_decode_rows(kv.kind, k, kv.keyStride.m, w, d, tileBuffer, d)
                    if n <= smallRows {
                        ak_rows_dot_keys(qp + r0 * d, d, n, d, tileBuffer, d, w, sr, Bc)
                    } else {
                        BLAS.sgemm(.none, .transpose, m: n, n: w, k: d, a: qp + r0 * d, lda: d, b: tileBuffer, ldb: d, c: sr, ldc: Bc)
                    }
                }
                L.addBias(blk, j0: j0, width: w, s: s, lds: Bc, rows: rs)
                if masked { L.maskBeforeWindow(s, lds: Bc, rows: rs, lower: lower) }
                ak_online_softmax_tile(sr, n, w, Bc, masked ? valid + r0 : nil, m + r0, l + r0, o + r0 * dv, dv, dv)
                if n <= storedRows {
                    ak_kv_rows_times_values(kv.kind, sr, Bc, n, v, kv.valueStride.m, w, dv, o + r0 * dv, dv)
                } else {
                    ak_kv_decode_rows(kv.kind, v, kv.valueStride.m, w, dv, tileBuffer, dv)
                    if n <= smallRows {
                        ak_rows_times_values(sr, Bc, n, tileBuffer, dv, w, dv, o + r0 * dv, dv)
                    } else {
                        BLAS.sgemm(.none, .none, m: n, n: dv, k: w, a: sr, lda: Bc, b: tileBuffer, ldb: dv, beta: 1, c: o + r0 * dv, ldc: dv)
                    }
                }
                return
            }
            let k = L.kRow(blk.b, blk.kvHead, slot), v = L.vRow(blk.b, blk.kvHead, slot)
            if n <= smallRows {
                ak_rows_dot_keys(qp + r0 * d, d, n, d, k, L.kStride.m, w, sr, Bc)
            } else {
                BLAS.sgemm(.none, .transpose, m: n, n: w, k: d, a: qp + r0 * d, lda: d, b: k, ldb: L.kStride.m, c: sr, ldc: Bc)
            }
            L.addBias(blk, j0: j0, width: w, s: s, lds: Bc, rows: rs)
            if masked { L.maskBeforeWindow(s, lds: Bc, rows: rs, lower: lower) }
            ak_online_softmax_tile(sr, n, w, Bc, masked ? valid + r0 : nil, m + r0, l + r0, o + r0 * dv, dv, dv)
            if n <= smallRows {
                ak_rows_times_values(sr, Bc, n, v, L.vStride.m, w, dv, o + r0 * dv, dv)
            } else {
                BLAS.sgemm(.none, .none, m: n, n: dv, k: w, a: sr, lda: Bc, b: v, ldb: L.vStride.m, beta: 1, c: o + r0 * dv, ldc: dv)
            }
        }
        while let item = queue.next() {
            let split = item % splits
            blk = L.queryBlock(item: item / splits, blockRows: Br)
            let rows = G * blk.rows
            L.packQueries(blk, into: qp)
            if quantisedRowBytes > 0 { ak_kv_q8_quantize_queries(qp, d, rows, d, quantised) }
            o.update(repeating: 0, count: rows * dv)
            m.update(repeating: -.infinity, count: rows)
            l.update(repeating: 0, count: rows)
            // The band of keys some row sees (causal: up to the last row's diagonal; a sliding
            // window: from the first row's window start); this item's share of it: contiguous,
            // tile-aligned, a function of the block only.
            let band = L.blockKeys(blk)
            let perSplit = ((band.count + splits - 1) / splits + Bc - 1) / Bc * Bc
            let lo = min(band.upperBound, band.lowerBound + split * perSplit), hi = min(band.upperBound, lo + perSplit)
            // Keys every row sees in wide unmasked tiles; the band's triangles in narrow tiles, in
            // each only the rows that see one of its keys (per head: a contiguous range of the
            // block's positions), so the work outside the band is at most a triangleTile-wide sliver.
            L.walkKeyTiles(blk, keys: lo..<hi, wide: Bc, narrow: triangleTile) { j0, w, t0, t1, masked in
                if masked { L.fillBand(blk, j0: j0, width: w, rows: t0, t1, valid: valid, lower: lower) }
                if t0 == 0 && t1 == blk.rows {
                    tile(rows: 0..<rows, j0: j0, w: w, masked: masked)
                } else {
                    for g in 0..<G { tile(rows: (g * blk.rows + t0)..<(g * blk.rows + t1), j0: j0, w: w, masked: masked) }
                }
            }
            if let partial {
                let p = partial + item * partialStride
                p.update(from: o, count: rows * dv)
                (p + R * dv).update(from: m, count: rows)
                (p + R * dv + R).update(from: l, count: rows)
                continue
            }
            // Rows never given a visible key keep l = 0 and come out as zeros.
            L.finish(blk, o: o, m: m, l: l)
        }
    }
    guard let partial else { return }
    // Merge the key splits in a fixed order (the (max, sum, output) rule), then normalise.
    try runWithScratch(items: blocks, threads: plan.threads, floats: R * (dv + 2), purpose: "key-split merge") { ws, queue in
        let o = ws.floats(R * dv), m = ws.floats(R), l = ws.floats(R)
        while let item = queue.next() {
            let blk = L.queryBlock(item: item, blockRows: Br)
            let rows = G * blk.rows
            let p = partial + item * splits * partialStride
            ak_merge_partials(splits, p, dv, partialStride, p + R * dv, p + R * dv + R, partialStride,
                              rows, dv, o, dv, m, l)
            L.finish(blk, o: o, m: m, l: l)
        }
    }
}

extension AttentionLayout {
    /// The end of a query block: output rows `o / l` (zeros where l = 0) and, when the layout
    /// keeps them, the log-sum-exp `m + log l` of each row (-inf for a row that saw no key).
    func finish(_ blk: QueryBlock, o: UnsafePointer<Float>, m: UnsafePointer<Float>, l: UnsafePointer<Float>) {
        for (gi, g) in blk.heads.enumerated() {
            let h = blk.kvHead * group + g
            ak_divide_rows(o + gi * blk.rows * dv, dv, outRow(blk.b, h, blk.i0), outStride.n, blk.rows, dv, l + gi * blk.rows)
            if let lse {
                let dst = lse + (blk.b * H + h) * N + blk.i0
                for t in 0..<blk.rows {
                    let r = gi * blk.rows + t
                    dst[t] = l[r] > 0 ? m[r] + Foundation.log(l[r]) : -.infinity
                }
            }
        }
    }
}
