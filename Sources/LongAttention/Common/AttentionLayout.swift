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
    /// Output `[B, H, N, dv]`, contiguous.
    let out: UnsafeMutablePointer<Float>
    let scale: Float
    let causal: Bool
    let keyLengths: [Int]?
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
        out + ((b * H + h) * N + i) * dv
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
