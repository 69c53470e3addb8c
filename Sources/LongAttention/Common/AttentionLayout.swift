import AttentionTensor
import CAttentionKernels

/// Raw-pointer description of one attention problem, shared by the kernels: where each
/// (batch, head, position) row of q, k, v, the output and the bias starts. Rows are read in place
/// through these strides (views are never copied); only the last axis must be contiguous.
struct AttentionLayout {
    let B: Int, H: Int, Hkv: Int, N: Int, M: Int, d: Int, dv: Int
    let q: UnsafePointer<Float>, qStride: (b: Int, h: Int, n: Int)
    let k: UnsafePointer<Float>, kStride: (b: Int, h: Int, m: Int)
    let v: UnsafePointer<Float>, vStride: (b: Int, h: Int, m: Int)
    /// Output rows: `out + b·s.b + h·s.h + i·s.n` is row (b, h, i), `dv` contiguous floats
    /// (head-major `[B, H, N, dv]` by default, or token-major `[B, N, H, dv]`).
    let out: UnsafeMutablePointer<Float>
    let scale: Float
    let causal: Bool
    let keyLengths: [Int]?
    /// Output strides of (batch, head, position); nil: contiguous `[B, H, N, dv]`.
    var outStrideOverride: (b: Int, h: Int, n: Int)? = nil
    /// Sliding window `W` (with `causal`): query `i` sees keys `j > i + queryOffset - W` (nil: none).
    var window: Int? = nil
    /// Keys and values held in a ring buffer (a sliding-window KV cache layer): logical key `j`
    /// (position order, `0 ..< M`) is stored at row `(ring.start + j) mod ring.slots`. Tiles never
    /// cross the wrap-around (``ringBreak``), so each is read in place with the usual strides.
    var ring: (start: Int, slots: Int)? = nil
    /// Bias rows: `bias + b·s.b + h·s.h + i·s.n` is row (b, h, i), `M` contiguous floats; a
    /// broadcast axis has stride 0.
    let bias: UnsafePointer<Float>?, biasStride: (b: Int, h: Int, n: Int)
    /// ALiBi slopes, one per query head, or nil.
    var alibi: UnsafePointer<Float>? = nil
    /// Log-sum-exp of each query row, `[B, H, N]` contiguous, written by the forward for the
    /// backward pass (nil: not kept).
    var lse: UnsafeMutablePointer<Float>? = nil
    /// Linear attention: each query row's normaliser `φ(q)·z + ε`, `[B, H, N]` contiguous, written by
    /// the forward for the backward (nil: not kept).
    var normalizers: UnsafeMutablePointer<Float>? = nil
    /// Linear attention: a state to start from, `[B, Hkv, F, dv + 1]` contiguous (S beside z per KV
    /// head), instead of zeros (nil: zeros).
    var linearInitialState: UnsafePointer<Float>? = nil
    /// Keys and values held in a low-precision KV cache: when set, the tiled kernel reads these
    /// rows (and `k`, `v` point nowhere useful).
    var stored: StoredKV? = nil
    /// Position of query row 0 among the keys; nil means bottom-right alignment, `M - N`.
    /// (BigBird's global rows are row views of a longer sequence and pass their own.)
    var queryOffsetOverride: Int? = nil

    /// Query `i` sits at key position `i + queryOffset`.
    var queryOffset: Int { queryOffsetOverride ?? (M - N) }

    /// Query heads per KV head.
    var group: Int { H / Hkv }

    @inline(__always) func qRow(_ b: Int, _ h: Int, _ i: Int) -> UnsafePointer<Float> {
        q + b * qStride.b + h * qStride.h + i * qStride.n
    }
    @inline(__always) func kRow(_ b: Int, _ h: Int, _ j: Int) -> UnsafePointer<Float> {
        k + b * kStride.b + h * kStride.h + j * kStride.m
    }
    @inline(__always) func vRow(_ b: Int, _ h: Int, _ j: Int) -> UnsafePointer<Float> {
        v + b * vStride.b + h * vStride.h + j * vStride.m
    }
    @inline(__always) func outRow(_ b: Int, _ h: Int, _ i: Int) -> UnsafeMutablePointer<Float> {
        out + b * outStride.b + h * outStride.h + i * outStride.n
    }
    var outStride: (b: Int, h: Int, n: Int) { outStrideOverride ?? (H * N * dv, N * dv, dv) }
    /// Whether the output is contiguous `[B, H, N, dv]` (a head's rows follow each other).
    var headMajorOutput: Bool { outStrideOverride == nil }

    /// Stored row of logical key `j` (the identity unless the keys sit in a ring buffer).
    @inline(__always) func keySlot(_ j: Int) -> Int {
        guard let ring else { return j }
        let p = ring.start + j
        return p >= ring.slots ? p - ring.slots : p
    }
    /// The first logical key stored after the ring's wrap-around (tiles stop there), or nil.
    var ringBreak: Int? {
        guard let ring, ring.start > 0, ring.slots - ring.start < M else { return nil }
        return ring.slots - ring.start
    }

    /// The first key query `i` sees: `i + queryOffset - W + 1` under a sliding window, else 0.
    /// Query `i` sees keys `keyStart(i) ..< keyLimit(b, i)` (none when that is empty); both ends
    /// grow with `i`.
    @inline(__always) func keyStart(_ i: Int) -> Int {
        guard let window else { return 0 }
        return max(0, i + queryOffset - window + 1)
    }

    /// Keys `j < keyLimit(b, i)` are visible to query `i` of batch `b` (causal and padding).
    @inline(__always) func keyLimit(_ b: Int, _ i: Int) -> Int {
        var limit = M
        if causal { limit = min(limit, i + queryOffset + 1) }
        if let keyLengths { limit = min(limit, keyLengths[b]) }
        return max(0, limit)
    }
}

/// Key and value rows stored as bf16, f16 or q8_0 (``KVCacheType``): raw rows the decode kernels
/// read in place, with byte strides of (batch, head, position).
struct StoredKV {
    let kind: Int32
    let keys: UnsafeRawPointer, values: UnsafeRawPointer
    let keyStride: (b: Int, h: Int, m: Int), valueStride: (b: Int, h: Int, m: Int)

    @inline(__always) func keyRow(_ b: Int, _ h: Int, _ j: Int) -> UnsafeRawPointer {
        keys + b * keyStride.b + h * keyStride.h + j * keyStride.m
    }
    @inline(__always) func valueRow(_ b: Int, _ h: Int, _ j: Int) -> UnsafeRawPointer {
        values + b * valueStride.b + h * valueStride.h + j * valueStride.m
    }
}

/// One query block of one (batch, KV head): positions `i0 ..< i0 + rows` of the query heads
/// `heads` (indices within the group, all `group` of them unless a backward pass splits them) of
/// KV head `kvHead`, stacked into `heads.count · rows` matrix rows (head-major), so all query
/// heads sharing a K/V run through one GEMM.
struct QueryBlock {
    let b: Int, kvHead: Int, i0: Int, rows: Int
    let heads: Range<Int>
    /// Stacked rows.
    var stacked: Int { heads.count * rows }
}

extension AttentionLayout {
    /// Work item → query block. Blocks are handed out last-first: under a causal mask the late
    /// blocks are the expensive ones, and starting them first balances the threads.
    func queryBlock(item: Int, blockRows: Int) -> QueryBlock {
        let nqb = (N + blockRows - 1) / blockRows
        let qb = nqb - 1 - item % nqb
        let bh = item / nqb
        let i0 = qb * blockRows
        return QueryBlock(b: bh / Hkv, kvHead: bh % Hkv, i0: i0, rows: min(blockRows, N - i0), heads: 0..<group)
    }

    func workItems(blockRows: Int) -> Int { B * Hkv * ((N + blockRows - 1) / blockRows) }

    /// Copies the block's queries, times `scale`, into `qp` as `[group · rows, d]` (head-major):
    /// the scale is folded into the copy that stacks the group for one GEMM.
    func packQueries(_ blk: QueryBlock, into qp: UnsafeMutablePointer<Float>) {
        for (gi, g) in blk.heads.enumerated() {
            ak_copy_scaled(qRow(blk.b, blk.kvHead * group + g, blk.i0), qStride.n,
                                qp + gi * blk.rows * d, d, blk.rows, d, scale)
        }
    }

    /// The keys some row of the block sees: from the first row's window start to the last row's limit.
    func blockKeys(_ blk: QueryBlock) -> Range<Int> {
        let lo = keyStart(blk.i0), hi = keyLimit(blk.b, blk.i0 + blk.rows - 1)
        return lo < hi ? lo..<hi : lo..<lo
    }

    /// The key tiles a query block visits within `keys` (a part of ``blockKeys(_:)``), in order:
    /// `body(j0, w, t0, t1, masked)` for the tile `j0 ..< j0 + w` and the block positions
    /// `t0 ..< t1` (per head) that see at least one of its keys. Keys every row sees (`keyStart`
    /// of the last row up to `keyLimit` of the first) go in `wide` tiles, unmasked; the two
    /// triangles of the band (the causal diagonal, and under a sliding window its lower edge) in
    /// `narrow` tiles restricted to the rows that see them, masked. Tiles outside the band are
    /// never visited, and no tile crosses a ring buffer's wrap-around. The tiled forward, the
    /// backward and ``ExactAttentionPlan/work(mask:)`` all walk this one sequence.
    @inline(__always)
    func walkKeyTiles(_ blk: QueryBlock, keys: Range<Int>, wide: Int, narrow: Int,
                      _ body: (_ j0: Int, _ w: Int, _ t0: Int, _ t1: Int, _ masked: Bool) -> Void) {
        let b = blk.b, first = blk.i0, last = blk.i0 + blk.rows - 1
        let fullLo = keyStart(last), fullHi = keyLimit(b, first)
        let brk = ringBreak
        var j0 = keys.lowerBound
        while j0 < keys.upperBound {
            var end = keys.upperBound
            if let brk, j0 < brk { end = min(end, brk) }
            if j0 >= fullLo && j0 < fullHi {
                let w = min(wide, min(end, fullHi) - j0)
                body(j0, w, 0, blk.rows, false)
                j0 += w
                continue
            }
            if j0 < fullLo && fullLo < fullHi { end = min(end, fullLo) }
            let w = min(narrow, end - j0)
            // Rows whose limit passes j0 (a suffix from t0), and of those the ones whose window
            // starts before the tile's end and before their own limit (a prefix up to t1).
            var t0 = 0
            while t0 < blk.rows && keyLimit(b, first + t0) <= j0 { t0 += 1 }
            var t1 = t0
            while t1 < blk.rows {
                let start = keyStart(first + t1)
                if start >= j0 + w || start >= keyLimit(b, first + t1) { break }
                t1 += 1
            }
            if t1 > t0 {
                let masked = keyStart(first + t1 - 1) > j0 || keyLimit(b, first + t0) < j0 + w
                body(j0, w, t0, t1, masked)
            }
            j0 += w
        }
    }

    /// For the stacked rows of positions `t0 ..< t1` (every head of the block), the columns of the
    /// key range `j0 ..< j0 + width` each may see: `lower[r] ..< valid[r]` (`lower` only under a
    /// sliding window; an empty range gives `valid = 0`).
    func fillBand(_ blk: QueryBlock, j0: Int, width: Int, rows t0: Int, _ t1: Int, valid: UnsafeMutablePointer<Int32>,
                  lower: UnsafeMutablePointer<Int32>) {
        for t in t0..<t1 {
            let hi = min(max(keyLimit(blk.b, blk.i0 + t) - j0, 0), width)
            let lo = min(max(keyStart(blk.i0 + t) - j0, 0), width)
            for gi in 0..<blk.heads.count {
                valid[gi * blk.rows + t] = Int32(lo < hi ? hi : 0)
                lower[gi * blk.rows + t] = Int32(lo < hi ? lo : 0)
            }
        }
    }

    /// Sets the scores before each row's window start to -inf (stacked rows `rows` of `s`, leading
    /// dimension lds): the sliding window's lower edge, which the softmax kernels' per-row column
    /// limits (the upper edge) do not express.
    func maskBeforeWindow(_ s: UnsafeMutablePointer<Float>, lds: Int, rows: Range<Int>, lower: UnsafePointer<Int32>) {
        guard window != nil else { return }
        for r in rows where lower[r] > 0 { ak_fill(s + r * lds, Int(lower[r]), -.infinity) }
    }

    /// Fills `valid[r]` (for each stacked row) with the number of leading columns of the key range
    /// `j0 ..< j0 + width` it may see; returns false when no row is masked within the range.
    func fillValid(_ blk: QueryBlock, j0: Int, width: Int, valid: UnsafeMutablePointer<Int32>) -> Bool {
        // keyLimit grows with i, so the first row is the most restricted.
        if keyLimit(blk.b, blk.i0) >= j0 + width { return false }
        for t in 0..<blk.rows {
            let c = Int32(min(max(keyLimit(blk.b, blk.i0 + t) - j0, 0), width))
            for gi in 0..<blk.heads.count { valid[gi * blk.rows + t] = c }
        }
        return true
    }

    /// Adds the additive bias and the ALiBi penalty of keys `j0 ..< j0 + width` to the stacked
    /// score rows `rows` of `s` (leading dimension lds; row r of the block is at `s + r·lds`).
    func addBias(_ blk: QueryBlock, j0: Int, width: Int, s: UnsafeMutablePointer<Float>, lds: Int, rows: Range<Int>? = nil) {
        if bias == nil && alibi == nil { return }
        for r in rows ?? 0..<blk.stacked {
            let h = blk.kvHead * group + blk.heads.lowerBound + r / blk.rows, i = blk.i0 + r % blk.rows
            if let bias { ak_add(s + r * lds, bias + blk.b * biasStride.b + h * biasStride.h + i * biasStride.n + j0, width) }
            if let alibi { ak_alibi_row(s + r * lds, width, alibi[h], i + queryOffset - j0) }
        }
    }
}
